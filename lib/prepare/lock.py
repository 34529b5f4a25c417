"""One process at a time prepares a dataset: an exclusive ``fcntl`` lock per dataset folder.

Every writer of ``<root>/<dataset>`` (generation, conversion, ``prepare_missing`` on every
rank) holds ``<root>/.<dataset>.lock`` while it works. A process that finds it taken blocks
until the holder is done and then sees the finished folder; no collective, no timeout. The
lock dies with its process (the kernel releases it), so a killed run never leaves a stale
lock; temporary folders a killed run left behind are removed by the next holder, which is safe
exactly because no live writer can own them while the lock is held.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from lib.prepare.writer import remove_stale_temps

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no locking, one process at a time
    fcntl = None

logger = logging.getLogger(__name__)


def lock_path(root: str, dataset: str) -> str:
    """The lock file of a dataset folder: ``<root>/.<dataset>.lock``."""
    return os.path.join(root, f".{dataset}.lock")


def _acquire(path: str, dataset: str) -> int:
    """Open and lock ``path``; returns the locked descriptor.

    The holder removes the file when it is done (so the root stays clean), and a waiter may
    then hold a lock on a file no longer at ``path``: it checks that its descriptor is still
    the file at ``path`` and starts over otherwise.
    """
    waiting = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not waiting:
                    logger.info(
                        "another process is preparing %s (lock %s): waiting for it", dataset, path
                    )
                    waiting = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(path).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fd).st_ino:
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


@contextlib.contextmanager
def dataset_lock(root: str, dataset: str) -> Iterator[None]:
    """Hold the lock of ``<root>/<dataset>``, then remove temporaries of killed runs.

    Args:
        root: ``DATASETS.ROOT`` (created if missing).
        dataset: the dataset folder name.

    Yields:
        Nothing; the caller may write the folder until the block ends.
    """
    os.makedirs(root, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        yield
        return
    path = lock_path(root, dataset)
    fd = _acquire(path, dataset)
    try:
        remove_stale_temps(root, dataset)
        yield
    finally:
        # Unlink before unlocking: a waiter that then gets the old file sees it is gone.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
