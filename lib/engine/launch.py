"""Set-up shared by tools/train_net.py and tools/test_net.py: device, processes, seeds, logs."""

from __future__ import annotations

import logging
import random
import sys
import warnings

import numpy as np
import torch
from yacs.config import CfgNode

from lib.utils import comm
from lib.utils.logger import environment_info, setup_logger

LOGGER_NAME = "iodine"


class RunError(RuntimeError):
    """A run cannot proceed for a reason the user can fix (device, dataset, ...): the tools
    print the message alone, without a traceback."""


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
        return torch.device("cuda", comm.get_local_rank())
    return torch.device("cpu")


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and every GPU) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup_run(cfg: CfgNode, argv: list[str], log_name: str = "log.txt"):
    """Initialise processes, device and logging for a tool.

    Args:
        cfg: the frozen config.
        argv: the command line, recorded in the log.
        log_name: file in OUTPUT_DIR that rank 0 appends to.

    Returns:
        ``(device, logger)``.
    """
    device = resolve_device(cfg.MODEL.DEVICE)
    comm.init_distributed(device.type == "cuda")
    device = resolve_device(cfg.MODEL.DEVICE)  # LOCAL_RANK's GPU once distributed
    logger = setup_logger(LOGGER_NAME, cfg.OUTPUT_DIR, comm.get_rank(), log_name)
    logger.info("command: %s", " ".join([sys.executable, *argv]))
    logger.info("world size %d\n%s", comm.get_world_size(), environment_info(device))
    if cfg.SOLVER.AMP and device.type != "cuda":
        message = f"SOLVER.AMP (bf16 autocast) needs CUDA; ignored on {device}"
        warnings.warn(message, stacklevel=2)
        logger.warning(message)
    return device, logger


def log_config(logger: logging.Logger, cfg: CfgNode) -> None:
    """Write the full config to the log."""
    logger.info("config:\n%s", cfg.dump())


def run_tool(argv: list[str], parse_args, run, errors: tuple[type[BaseException], ...]) -> int:
    """Shared ``main`` of train_net and test_net: load the config, run, report known failures.

    Args:
        argv: command-line arguments (without the program name).
        parse_args: ``argv -> Namespace`` with ``config_file`` and ``opts``.
        run: ``(cfg, argv) -> Any``, the tool's work.
        errors: exception types reported as a one-line ``error: ...`` on stderr (exit 1);
            config errors (missing file, bad key or value) always are.

    Returns:
        The exit status: 0, or 1 after a reported failure.
    """
    from lib.config import load_cfg

    args = parse_args(argv)
    try:
        cfg = load_cfg(args.config_file or None, args.opts)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        run(cfg, argv)
    except errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
