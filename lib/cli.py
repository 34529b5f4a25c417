"""The tools' plumbing: command line, runner, config set-up and the session around a tool.

Every tool is ``main(argv) -> exit status`` built from these pieces::

    parser = default_argument_parser("Evaluate IODINE.")
    return run_tool(argv, parser, evaluate)      # evaluate(cfg, args) does the work

``run_tool`` loads the config (a bad file, key or value is one line ``error: ...`` on stderr
and exit status 1) and reports the project's own errors (``lib.errors.IodineError``: unknown
dataset, missing data, bad checkpoint, refused precision, ...) the same way; any other
exception keeps its traceback. ``tool_session`` sets up processes, device and log.txt around
the work and writes the traceback of a failure to log.txt as well. The engine never imports
this module.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from yacs.config import CfgNode

from lib.engine.setup import resolve_device, setup_precision
from lib.errors import IodineError
from lib.utils import comm
from lib.utils.logger import close_logger, environment_info, setup_logger

LOGGER_NAME = "iodine"


def default_argument_parser(description: str) -> argparse.ArgumentParser:
    """The tools' command line: ``--config-file CFG`` and ``KEY VALUE`` config overrides.

    A tool adds its own options to the returned parser; parse it with ``parse_tool_args`` so
    that the overrides may stand anywhere on the line (before, between or after options).

    Args:
        description: the tool's one-line description for ``--help``.

    Returns:
        The parser; its namespace has ``config_file`` and ``opts`` (the flat override list).
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config-file", default="", metavar="FILE", help="YAML config file")
    parser.add_argument(
        "opts", nargs="*", metavar="KEY VALUE", help="config overrides, e.g. SOLVER.MAX_ITER 100"
    )
    return parser


def parse_tool_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse a tool's command line, collecting ``KEY VALUE`` pairs wherever they stand.

    Args:
        parser: from ``default_argument_parser`` (plus the tool's options), or any parser
            whose namespace may have ``opts``.
        argv: the arguments without the program name.

    Returns:
        The namespace; ``opts`` holds every override in command-line order.

    Raises:
        SystemExit: an unknown ``--option`` (argparse's usage message, status 2).
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

    return load_cfg(args.config_file or None, args.opts)


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
        make_cfg: ``args -> cfg`` (default: ``--config-file`` plus ``opts``); a tool whose
            options set config keys passes its own.

    Returns:
        The exit status: 0, or 1 after a one-line ``error: ...`` on stderr. A config error
        (missing file, unknown key, bad value) is such a failure too.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_tool_args(parser, argv)
    args.argv = argv
    try:
        cfg = make_cfg(args)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        run(cfg, args)
    except (IodineError, *errors) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


@contextlib.contextmanager
def tool_session(
    cfg: CfgNode, argv: Sequence[str], log_name: str = "log.txt"
) -> Iterator[tuple[torch.device, logging.Logger]]:
    """Processes, device and logging around a tool's work.

    On entry: the process group (under torchrun), the device, the logger (console, and
    ``OUTPUT_DIR/log_name`` on rank 0) with the command, environment and config. On exit:
    a failure's traceback goes to the log file (``run_tool`` prints a known failure's message
    alone), then the log file is closed and the process group destroyed.

    Args:
        cfg: the frozen config.
        argv: the command line, recorded in the log.
        log_name: file in OUTPUT_DIR that rank 0 appends to.

    Yields:
        ``(device, logger)``.
    """
    device = resolve_device(cfg.MODEL.DEVICE)
    comm.init_distributed(device.type == "cuda")
    logger = None
    try:
        device = resolve_device(cfg.MODEL.DEVICE)  # LOCAL_RANK's GPU once distributed
        logger = setup_logger(LOGGER_NAME, cfg.OUTPUT_DIR, comm.get_rank(), log_name)
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
    cfg: CfgNode, names: Iterable[str], is_train: bool, logger: logging.Logger | None = None
) -> dict[str, torch.utils.data.Dataset]:
    """Prepare missing built-in datasets, then build each dataset on this rank.

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
