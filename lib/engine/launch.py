"""The tools' shared layer: command line, config, process set-up, weights and datasets.

Every tool is ``main(argv) -> exit status`` built from these pieces::

    parser = default_argument_parser("Evaluate IODINE.")
    return run_tool(argv, parser, evaluate)      # evaluate(cfg, args) does the work

``run_tool`` loads the config and turns the failures a user can fix (a bad config key, a
missing dataset or checkpoint, ...) into one line ``error: ...`` on stderr and exit status 1;
``tool_session`` sets up processes, device and log.txt around the work and writes the
traceback of such a failure to log.txt only.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from yacs.config import CfgNode

from lib.engine.checkpoint import Checkpointer, CheckpointError
from lib.engine.precision import (
    PrecisionError,
    apply_precision,
    check_precision,
    resolve_precision,
)
from lib.utils import comm
from lib.utils.logger import close_logger, environment_info, setup_logger

LOGGER_NAME = "iodine"


class RunError(RuntimeError):
    """A run cannot proceed for a reason the user can fix (device, dataset, ...): the tools
    print the message alone, without a traceback."""


# Failures every tool reports as one line (config errors are handled separately).
KNOWN_ERRORS: tuple[type[BaseException], ...] = (RunError, CheckpointError)


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
        errors: further exception types reported as one line (``KNOWN_ERRORS`` always are).
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
    except (*KNOWN_ERRORS, *errors) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def resolve_device(name: str) -> torch.device:
    """The device MODEL.DEVICE asks for.

    Args:
        name: "auto" (CUDA when available, else CPU), "cpu" or "cuda".

    Returns:
        ``torch.device``; under torchrun on CUDA, the GPU of LOCAL_RANK.

    Raises:
        RunError: "cuda" requested but no CUDA device is available.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RunError("config key MODEL.DEVICE = 'cuda' but no CUDA device is available")
        # With CUDA_VISIBLE_DEVICES giving each process one GPU, LOCAL_RANK exceeds the count.
        return torch.device("cuda", comm.get_local_rank() % torch.cuda.device_count())
    return torch.device("cpu")


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and every GPU) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup_precision(
    cfg: CfgNode, device: torch.device, logger: logging.Logger | None = None
) -> dict[str, Any]:
    """Resolve, check and apply MODEL.PRECISION and MODEL.DETERMINISTIC (``lib.engine.precision``).

    Args:
        cfg: the config (MODEL.PRECISION, MODEL.DETERMINISTIC, the deprecated SOLVER.AMP).
        device: where the model runs.
        logger: where the settings are logged (INFO); a SOLVER.AMP warning is logged too.

    Returns:
        The settings made (``apply_precision``'s dict plus ``support``).

    Raises:
        RunError: the precision cannot run on this device (bf16 without native support).
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        precision = resolve_precision(cfg, device)
    for warning in caught:
        # Re-issued for the caller (tests, the console) and kept in log.txt.
        warnings.warn(str(warning.message), warning.category, stacklevel=3)
        if logger is not None:
            logger.warning("%s", warning.message)
    try:
        support = check_precision(precision, device)
    except PrecisionError as exc:
        raise RunError(str(exc)) from exc
    settings = apply_precision(precision, cfg.MODEL.DETERMINISTIC, device)
    settings["support"] = support
    if logger is not None:
        logger.info("precision: %s", ", ".join(f"{key} {value}" for key, value in settings.items()))
    return settings


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


@contextlib.contextmanager
def reported_as_run_error(what: str, logger: logging.Logger | None = None) -> Iterator[None]:
    """Turn the data layer's user errors (missing file, bad value, unknown name) inside the
    block into ``RunError("<what>: <message>")``; the traceback goes to the log file.

    Args:
        what: what was being built, for the message (e.g. ``"dataset clevr6_train"``).
        logger: where the traceback is logged (DEBUG).
    """
    try:
        yield
    except (FileNotFoundError, ValueError, KeyError) as exc:
        if logger is not None:
            logger.debug("%s failed", what, exc_info=True)
        raise RunError(f"{what}: {exc}") from exc


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
        RunError: a dataset is missing, unknown or unreadable (the message names it).
    """
    from lib.data import dataset_provenance, make_dataset
    from lib.prepare import prepare_missing

    names = list(names)
    logger = logger or logging.getLogger(LOGGER_NAME)
    with reported_as_run_error(f"datasets {names}", logger):
        prepare_missing(cfg, names)
    datasets = {}
    for name in names:
        with reported_as_run_error(f"dataset {name}", logger):
            datasets[name] = make_dataset(name, cfg, is_train)
        logger.info(
            "%s dataset %s: %d examples; provenance: %s",
            "training" if is_train else "evaluation",
            name,
            len(datasets[name]),
            dataset_provenance(datasets[name]),
        )
    return datasets


def load_weights(
    cfg: CfgNode, model: nn.Module, logger: logging.Logger | None = None, purpose: str = "evaluate"
) -> tuple[str, int | None]:
    """Load MODEL.WEIGHT if set, else the checkpoint named by ``OUTPUT_DIR/last_checkpoint``.

    Args:
        cfg: the config (MODEL.WEIGHT, OUTPUT_DIR).
        model: the model to load into (possibly wrapped).
        logger: where the load is reported.
        purpose: the verb of the error message ("nothing to <purpose>").

    Returns:
        ``(checkpoint path, its iteration or None)``.

    Raises:
        RunError: MODEL.WEIGHT is empty and OUTPUT_DIR has no ``last_checkpoint``.
        CheckpointError: the file is missing, unreadable or does not fit the model.
    """
    checkpointer = Checkpointer(model, save_dir=cfg.OUTPUT_DIR, save_to_disk=False, logger=logger)
    path = cfg.MODEL.WEIGHT or checkpointer.last_checkpoint()
    if not path:
        raise RunError(
            f"nothing to {purpose}: MODEL.WEIGHT is empty and {cfg.OUTPUT_DIR}/last_checkpoint "
            "does not exist (train first, or set MODEL.WEIGHT)"
        )
    state = checkpointer.load(path, weights_only=True)
    _set_eval_divisor(cfg, model, state.get("per_process_batch"), logger)
    return path, state.get("iteration")


def _set_eval_divisor(
    cfg: CfgNode, model: nn.Module, recorded: int | None, logger: logging.Logger | None
) -> None:
    """Evaluation divides the gradient inputs by the batch per process the weights were
    trained with (recorded in the checkpoint), unless MODEL.IODINE.EVAL_GRAD_DIVISOR is set."""
    from lib.engine.checkpoint import unwrap_model
    from lib.model.build import eval_grad_divisor

    net = unwrap_model(model)
    if not hasattr(net, "eval_grad_divisor"):
        return
    net.eval_grad_divisor = float(eval_grad_divisor(cfg, recorded))
    if logger is not None:
        logger.info(
            "evaluation divides the gradient inputs by %d (%s)",
            net.eval_grad_divisor,
            "MODEL.IODINE.EVAL_GRAD_DIVISOR"
            if cfg.MODEL.IODINE.EVAL_GRAD_DIVISOR > 0
            else "the checkpoint's per-process training batch"
            if recorded
            else "SOLVER.IMS_PER_BATCH // SOLVER.ACCUMULATE_STEPS: the weights record none",
        )


def wrap_distributed(model: nn.Module, device: torch.device) -> nn.Module:
    """The model wrapped in DistributedDataParallel under torchrun, else itself."""
    if comm.get_world_size() == 1:
        return model
    # The model's inner autograd.grad calls (refinement inputs) touch no parameter's
    # gradient, so DDP's hooks only see the final backward: no unused parameters.
    return nn.parallel.DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=False,
    )
