"""Optimiser and learning-rate schedule of the released IODINE training."""

from __future__ import annotations

from torch import nn
from torch.optim import Adam, Optimizer
from torch.optim.lr_scheduler import LambdaLR
from yacs.config import CfgNode

from lib.engine.checkpoint import unwrap_model


def make_optimizer(cfg: CfgNode, model: nn.Module) -> Adam:
    """Adam over every trainable parameter (released: beta1 0.95, TensorFlow's beta2 and eps).

    With ``SOLVER.DECODER_LR_FACTOR`` != 1 the decoder's parameters form a second group at
    ``BASE_LR * factor``; the scheduler scales both groups alike. 1.0 (released) keeps one group.

    Args:
        cfg: config (SOLVER.BASE_LR, DECODER_LR_FACTOR, BETA1, BETA2, EPS).
        model: the model (possibly wrapped in DDP or torch.compile).

    Returns:
        The optimiser.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups: list[dict] = [{"params": params}]
    factor = cfg.SOLVER.DECODER_LR_FACTOR
    if factor != 1.0:  # released: one group, so default checkpoints keep their optimiser layout
        decoder_ids = {id(p) for p in unwrap_model(model).decoder.parameters()}
        groups = [
            {"params": [p for p in params if id(p) not in decoder_ids]},
            {
                "params": [p for p in params if id(p) in decoder_ids],
                "lr": cfg.SOLVER.BASE_LR * factor,
            },
        ]
    return Adam(
        groups,
        lr=cfg.SOLVER.BASE_LR,
        betas=(cfg.SOLVER.BETA1, cfg.SOLVER.BETA2),
        eps=cfg.SOLVER.EPS,
    )


class _LrFactor:
    """lr(it) / BASE_LR: exponential decay times an optional linear warm-up.

    A callable object rather than a closure so that the scheduler's state dict carries it.
    """

    def __init__(self, decay_rate: float, decay_steps: int, warmup_iters: int) -> None:
        self.decay_rate = decay_rate
        self.decay_steps = decay_steps
        self.warmup_iters = warmup_iters

    def __call__(self, iteration: int) -> float:
        factor = self.decay_rate ** (iteration / self.decay_steps)
        if self.warmup_iters > 0 and iteration < self.warmup_iters:
            # Step `iteration` (0-based) uses (iteration + 1) / WARMUP_ITERS of the rate, so the
            # first step already learns and step WARMUP_ITERS - 1 reaches the full rate.
            factor *= (iteration + 1) / self.warmup_iters
        return factor


def make_lr_scheduler(cfg: CfgNode, optimizer: Optimizer) -> LambdaLR:
    """lr = BASE_LR * DECAY_RATE ** (it / DECAY_STEPS), with optional linear warm-up.

    The scheduler is stepped once per iteration (also for skipped non-finite steps), so its
    ``last_epoch`` equals the number of completed iterations and the rate is a function of the
    iteration alone, which makes resuming exact.

    Args:
        cfg: config (SOLVER.DECAY_RATE, DECAY_STEPS, WARMUP_ITERS).
        optimizer: the optimiser whose groups start at BASE_LR.

    Returns:
        The scheduler.
    """
    factor = _LrFactor(cfg.SOLVER.DECAY_RATE, cfg.SOLVER.DECAY_STEPS, cfg.SOLVER.WARMUP_ITERS)
    return LambdaLR(optimizer, lr_lambda=factor)
