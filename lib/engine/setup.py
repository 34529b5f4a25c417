"""Process set-up shared by training, evaluation and the benchmark: the device, seeds,
precision, weights and the DDP wrapper. No command-line or tool code (that is ``lib.cli``).
"""

from __future__ import annotations

import logging
import random
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn
from yacs.config import CfgNode

from lib.engine.checkpoint import Checkpointer, unwrap_model
from lib.engine.precision import PrecisionError, apply_precision, check_precision, resolve_precision
from lib.errors import RunError
from lib.utils import comm

__all__ = [
    "RunError",
    "load_weights",
    "resolve_device",
    "seed_all",
    "setup_precision",
    "wrap_distributed",
]


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
