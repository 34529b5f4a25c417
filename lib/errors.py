"""The project's own error types: failures a user can fix, reported by the tools as one line.

``lib.cli.run_tool`` prints an ``IodineError`` as ``error: <message>`` and exits with its
``exit_status`` (1); every other exception keeps its traceback, so a bug (say a ``KeyError``
in a new dataset class) never reads like a typo in the config. Each type also derives from the
builtin it refines, so ``except ValueError`` and the like keep working.
"""

from __future__ import annotations

import signal


class IodineError(Exception):
    """Base of the errors the tools report as one line: the message says what to fix."""

    exit_status = 1


class ConfigError(IodineError, ValueError):
    """A bad config file, key or value, or a bad tool argument."""


class DatasetError(IodineError, ValueError):
    """A dataset file or folder that cannot be read as its format says (the message names
    the file and the key, shape or value at fault)."""


class MissingDatasetError(IodineError, FileNotFoundError):
    """A dataset file or folder that does not exist (the message says how to make it)."""


class RunError(IodineError, RuntimeError):
    """A run cannot proceed for a reason the user can fix (device, precision, weights)."""


class DatasetExistsError(IodineError, FileExistsError):
    """A dataset folder to be written exists already (``--overwrite`` replaces it)."""


# The signals that end a run at a step boundary, with a checkpoint (lib.engine.trainer).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(IodineError):
    """SIGTERM or SIGINT ended the run; the exit status is 128 + the signal's number."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.exit_status = 128 + signum
