"""The tools' plumbing: command line, runner, config set-up and the session around a tool.

Every tool is ``main(argv) -> exit status`` built from these pieces::

    parser = default_argument_parser("Evaluate IODINE.")
    return run_tool(argv, parser, evaluate)      # evaluate(cfg, args) does the work

``run_tool`` loads the config and reports a bad config, the project's own errors
(``lib.errors.IodineError``) and a full or read-only disk as one line ``error: ...`` on
stderr; any other exception keeps its traceback. ``tool_session`` sets up processes, device
and log.txt around the work (and a training run's OUTPUT_DIR lock) and writes the traceback
of a failure to log.txt as well. The engine never imports this module.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from yacs.config import CfgNode

from lib.engine.setup import resolve_device, setup_precision
from lib.errors import STOP_SIGNALS, Interrupted, IodineError, RunError
from lib.utils import comm
from lib.utils.logger import close_logger, environment_info, setup_logger

LOGGER_NAME = "iodine"
RUN_LOCK = "train.lock"


def default_argument_parser(description: str) -> argparse.ArgumentParser:
    """The tools' command line: ``--config-file CFG`` and ``KEY VALUE`` config overrides
    (namespace ``config_file`` and ``opts``). A tool adds its own options; ``parse_tool_args``
    then takes the overrides wherever they stand."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config-file", default="", metavar="FILE", help="YAML config file")
    parser.add_argument(
        "opts", nargs="*", metavar="KEY VALUE", help="config overrides, e.g. SOLVER.MAX_ITER 100"
    )
    return parser


def parse_tool_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse a tool's command line (without the program name): ``opts`` of the namespace
    holds every ``KEY VALUE`` override in order; an unknown ``--option`` exits with status 2.
    """
    args, extra = parser.parse_known_args(list(argv))
    unknown = [a for a in extra if a.startswith("--")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    # argparse gives the first run of positionals to ``opts`` and leaves later ones (after an
    # option) in ``extra``; both are overrides, in order.
    args.opts = [*(getattr(args, "opts", None) or []), *extra]
    return args


def load_tool_cfg(args: argparse.Namespace) -> CfgNode:
    """The frozen config of ``--config-file`` and the overrides ``args.opts``."""
    from lib.config import load_cfg
    from lib.model.refinement_inputs import check_inputs

    cfg = load_cfg(args.config_file or None, args.opts)
    check_inputs(cfg.MODEL.REFINEMENT.IMAGE_INPUTS, cfg.MODEL.REFINEMENT.VECTOR_INPUTS)
    return cfg


# Errors of the storage, never of the code: one line naming the file.
_FULL_OR_READ_ONLY = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
_STORAGE_ERRNOS = {*_FULL_OR_READ_ONLY, errno.EACCES, errno.EPERM}


def _interrupt_handler() -> Callable[[int, Any], None]:
    pid = os.getpid()

    def interrupt(signum: int, frame: Any) -> None:
        if os.getpid() != pid:  # a forked DataLoader worker: its loop ends quietly on this
            raise KeyboardInterrupt
        raise Interrupted(signum, f"interrupted by {signal.Signals(signum).name}")

    return interrupt


def run_tool(
    argv: Sequence[str] | None,
    parser: argparse.ArgumentParser,
    run: Callable[[CfgNode, argparse.Namespace], Any],
    errors: tuple[type[BaseException], ...] = (),
    make_cfg: Callable[[argparse.Namespace], CfgNode] = load_tool_cfg,
) -> int:
    """The ``main`` of every tool: parse, load the config, run, report known failures.

    Args:
        argv: command-line arguments without the program name (None: ``sys.argv[1:]``).
        parser: the tool's parser (``default_argument_parser`` plus its options).
        run: ``(cfg, args) -> Any``, the tool's work; ``args.argv`` is the command line.
        errors: further exception types reported as one line (``IodineError`` always is).
        make_cfg: ``args -> cfg`` (default: ``--config-file`` plus ``opts``).

    Returns:
        The exit status: 0; or, after one line ``error: ...`` on stderr, 128 + the signal's
        number for SIGTERM and SIGINT (training first writes a checkpoint), else 1.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_tool_args(parser, argv)
    args.argv = argv
    try:
        cfg = make_cfg(args)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    main_thread = threading.current_thread() is threading.main_thread()
    interrupt = _interrupt_handler()
    previous = {s: signal.signal(s, interrupt) for s in STOP_SIGNALS} if main_thread else {}
    try:
        run(cfg, args)
    except (IodineError, *errors) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_status", 1)
    except OSError as exc:
        if exc.errno not in _STORAGE_ERRNOS:
            raise
        what = "cannot write" if exc.errno in _FULL_OR_READ_ONLY else "no access to"
        print(f"error: {what} {exc.filename or 'a file'}: {exc.strerror}", file=sys.stderr)
        return 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0


@contextlib.contextmanager
def output_dir_lock(folder: str) -> Iterator[None]:
    """Hold ``folder/RUN_LOCK`` for the block, or raise RunError naming its holder.

    A POSIX record lock (``lockf``): the kernel releases it when the process dies, and forked
    DataLoader workers do not inherit it, so a killed run never blocks the next one.
    """
    os.makedirs(folder, exist_ok=True)
    fd = os.open(os.path.join(folder, RUN_LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):  # not held: no locks here
                raise RunError(f"cannot lock {folder}/{RUN_LOCK}: {exc.strerror}") from exc
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise RunError(
                f"OUTPUT_DIR {folder} is in use by another training run ({holder}): wait for "
                "it to end, or choose another OUTPUT_DIR"
            ) from exc
        os.ftruncate(fd, 0)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {started}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def tool_session(
    cfg: CfgNode, argv: Sequence[str], log_name: str = "log.txt", lock: bool = False
) -> Iterator[tuple[torch.device, logging.Logger]]:
    """Processes, device and logging around a tool's work; yields ``(device, logger)``.

    On entry: the process group (under torchrun), the device, with ``lock`` (a training run)
    the ``output_dir_lock`` on rank 0 before anything is written there, the logger (console,
    and ``OUTPUT_DIR/log_name`` on rank 0) with the command ``argv``, environment and config.
    On exit: a failure's traceback goes to the log file, which is closed, then the lock is
    released and the process group destroyed.
    """
    device = resolve_device(cfg.MODEL.DEVICE)
    comm.init_distributed(device.type == "cuda")
    logger = None
    with contextlib.ExitStack() as held:
        try:
            device = resolve_device(cfg.MODEL.DEVICE)  # LOCAL_RANK's GPU once distributed
            error = ""
            if comm.is_main_process():
                try:
                    if lock:
                        held.enter_context(output_dir_lock(cfg.OUTPUT_DIR))
                    logger = setup_logger(LOGGER_NAME, cfg.OUTPUT_DIR, 0, log_name)
                except RunError as exc:
                    error = str(exc)
                except OSError as exc:
                    error = f"cannot write to OUTPUT_DIR {cfg.OUTPUT_DIR}: {exc.strerror}"
            # Rank 0's verdict, for every rank (they would otherwise wait for it).
            error = comm.all_gather_object(error)[0]
            if error:
                raise RunError(error)
            logger = logger or setup_logger(LOGGER_NAME, cfg.OUTPUT_DIR, comm.get_rank())
            logger.info("command: %s", " ".join([sys.executable, *argv]))
            logger.info("world size %d\n%s", comm.get_world_size(), environment_info(device))
            setup_precision(cfg, device, logger)
            logger.info("config:\n%s", cfg.dump())
            yield device, logger
        except Exception as exc:
            if logger is not None:
                logger.debug("run failed: %s", exc, exc_info=True)
            raise
        finally:
            if logger is not None:
                close_logger(logger)
            comm.destroy_distributed()


def build_datasets(
    cfg: CfgNode,
    names: Iterable[str],
    is_train: bool,
    logger: logging.Logger | None = None,
    prepare: bool = True,
) -> dict[str, torch.utils.data.Dataset]:
    """Prepare missing built-in datasets (unless ``prepare`` is False: the caller did), then
    build each dataset on this rank.

    Every rank calls it: ``lib.prepare.prepare_missing`` generates a missing built-in dataset
    under a file lock that the other ranks wait on, so no collective is involved.

    Args:
        cfg: the config (DATASETS, INPUT).
        names: dataset names (``tetrominoes_train``, ``folder:<path>``, ...).
        is_train: passed to ``make_dataset``.
        logger: where each dataset's size and provenance are logged.

    Returns:
        ``{name: dataset}`` in the order of ``names``.

    Raises:
        IodineError: a dataset is missing, unknown or unreadable (the message names it).
    """
    from lib.data import dataset_provenance, make_dataset
    from lib.prepare import prepare_missing

    names = list(names)
    logger = logger or logging.getLogger(LOGGER_NAME)
    if prepare:
        prepare_missing(cfg, names)
    datasets = {}
    for name in names:
        datasets[name] = make_dataset(name, cfg, is_train)
        logger.info(
            "%s dataset %s: %d examples; provenance: %s",
            "training" if is_train else "evaluation",
            name,
            len(datasets[name]),
            dataset_provenance(datasets[name]),
        )
    return datasets
