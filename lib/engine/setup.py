"""Process set-up shared by training, evaluation and the benchmark: the device, seeds,
precision, weights (a fresh start or the resume of a run) and the DDP wrapper."""

from __future__ import annotations

import logging
import os
import random
from typing import Any

import numpy as np
import torch
from torch import nn
from yacs.config import CfgNode

from lib.engine.checkpoint import (
    LAST_CHECKPOINT,
    Checkpointer,
    CheckpointError,
    read_checkpoint,
    set_rng_states,
    unwrap_model,
)
from lib.engine.precision import PrecisionError, apply_precision, check_precision
from lib.errors import RunError
from lib.utils import comm


def resolve_device(name: str) -> torch.device:
    """The device MODEL.DEVICE ``name`` asks for ("auto": CUDA when available, else CPU);
    under torchrun on CUDA, the GPU of LOCAL_RANK. RunError: "cuda" without a CUDA device."""
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
    """Check and apply MODEL.PRECISION and MODEL.DETERMINISTIC (``lib.engine.precision``).

    Returns:
        The settings made (``apply_precision``'s dict plus ``support``), logged to ``logger``.

    Raises:
        RunError: the precision cannot run on this device (from a ``PrecisionError``).
    """
    try:
        support = check_precision(cfg.MODEL.PRECISION, device)
    except PrecisionError as exc:
        raise RunError(str(exc)) from exc
    settings = apply_precision(cfg.MODEL.PRECISION, cfg.MODEL.DETERMINISTIC, device)
    settings["support"] = support
    if logger is not None:
        logger.info("precision: %s", ", ".join(f"{key} {value}" for key, value in settings.items()))
    return settings


def load_weights(
    cfg: CfgNode, model: nn.Module, logger: logging.Logger | None = None, purpose: str = "evaluate"
) -> tuple[str, int | None]:
    """Load MODEL.WEIGHT if set, else the checkpoint named by ``OUTPUT_DIR/last_checkpoint``
    (no fallback: a corrupted file is refused); returns ``(path, its iteration or None)``.

    Raises:
        RunError: neither exists ("nothing to <purpose>").
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


def resume_or_start(
    cfg: CfgNode,
    checkpointer: Checkpointer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    logger: logging.Logger,
) -> int:
    """Restore a run from ``OUTPUT_DIR/last_checkpoint`` (or the newest intact checkpoint
    when that one is unreadable), or start fresh (from MODEL.WEIGHT); returns the completed
    iterations. Seeds this rank's noise: the checkpoint's RNG state when it has one per
    process, else ``SEED + rank`` (plus an offset on a resume with another process count).
    A resumed run keeps the checkpoint's schedule (``scheduler``), warning about each key
    whose config value differs.

    Raises:
        CheckpointError: no intact checkpoint, an unreadable or mismatched MODEL.WEIGHT, or
            MODEL.WEIGHT set while OUTPUT_DIR holds a run to resume (the message says how).
    """
    rank, world = comm.get_rank(), comm.get_world_size()
    last = checkpointer.last_checkpoint(fall_back=True) if cfg.SOLVER.RESUME else None
    if last is not None and cfg.MODEL.WEIGHT and _started_from(last) != cfg.MODEL.WEIGHT:
        # Resuming would silently ignore the weights the user asked for. (A run started from
        # these weights resumes as usual: rerunning its command continues it.)
        raise CheckpointError(
            f"MODEL.WEIGHT is {cfg.MODEL.WEIGHT} but OUTPUT_DIR {cfg.OUTPUT_DIR} already holds "
            f"a run to resume ({last}); choose one: SOLVER.RESUME False starts over there "
            "from MODEL.WEIGHT, another OUTPUT_DIR starts a new run from it, and dropping "
            "MODEL.WEIGHT resumes the run"
        )
    seed_all(cfg.SEED + rank)
    if last is not None:
        state = checkpointer.load(last)
        start_iter = int(state["iteration"])
        rng = state.get("rng_states") or []
        if len(rng) == world:
            set_rng_states(rng[rank])
        else:
            message = "checkpoint has RNG states of %d processes, this run has %d: reseeding"
            logger.warning(message, len(rng), world)
            seed_all(cfg.SEED + rank + 7919 * start_iter)
        logger.info("resumed from %s at iteration %d", last, start_iter)
        _warn_schedule_change(cfg, scheduler, logger)
        return start_iter
    if cfg.MODEL.WEIGHT:
        checkpointer.load(cfg.MODEL.WEIGHT, weights_only=True)
        logger.info("fresh start from the weights of %s", cfg.MODEL.WEIGHT)
        return 0
    if not cfg.SOLVER.RESUME and os.path.exists(os.path.join(cfg.OUTPUT_DIR, LAST_CHECKPOINT)):
        logger.warning(
            "SOLVER.RESUME False: starting over in %s, which holds an earlier run's "
            "checkpoints: they stay until they are the lowest-numbered, and a later resume "
            "that finds last_checkpoint unreadable may fall back to one; move them away",
            cfg.OUTPUT_DIR,
        )
    logger.info("fresh start")
    return 0


def _started_from(path: str) -> str:
    """MODEL.WEIGHT of the run that wrote the checkpoint at ``path`` ("" if none or unknown)."""
    saved = read_checkpoint(path).get("cfg") or ""
    try:
        return str(CfgNode.load_cfg(saved).MODEL.WEIGHT) if saved else ""
    except (AttributeError, KeyError):  # a config without MODEL.WEIGHT: not from one
        return ""


def _warn_schedule_change(
    cfg: CfgNode, scheduler: torch.optim.lr_scheduler.LambdaLR, logger: logging.Logger
) -> None:
    # The scheduler state holds BASE_LR and the decay and warm-up settings of the checkpoint.
    factor = scheduler.lr_lambdas[0]
    saved = {
        "SOLVER.BASE_LR": scheduler.base_lrs[0],
        "SOLVER.DECAY_RATE": factor.decay_rate,
        "SOLVER.DECAY_STEPS": factor.decay_steps,
        "SOLVER.WARMUP_ITERS": factor.warmup_iters,
    }
    for key, value in saved.items():
        wanted = cfg.SOLVER[key.split(".")[1]]
        if abs(float(value) - float(wanted)) > 1e-12 * max(abs(float(wanted)), 1.0):
            message = "%s = %s in the config, but the resumed checkpoint's schedule uses %s: "
            message += "the checkpoint's value is kept (start a new OUTPUT_DIR to change it)"
            logger.warning(message, key, wanted, value)
