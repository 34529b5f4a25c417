"""Optimiser and learning-rate schedule of the released IODINE training."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.optim import Adam, Optimizer
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.optimizer import _get_value
from yacs.config import CfgNode

from lib.engine.checkpoint import unwrap_model


def _device_state(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> list[torch.Tensor]:
    state = optimizer.state.get(param, {})
    return [v for v in state.values() if torch.is_tensor(v) and v.device == param.device]


def masked_step(
    optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor], bad: torch.Tensor
) -> None:
    """``optimizer.step()``, undone on the device where ``bad`` (0-dim) is 1: no host sync.

    State created by this step (Adam's first step) is put back to zeros, its initial value.
    """
    with torch.no_grad():
        saved = {p: [p.clone(), *[v.clone() for v in _device_state(optimizer, p)]] for p in params}
        optimizer.step()
        keep = bad > 0
        for p in params:
            now = [p, *_device_state(optimizer, p)]
            before = saved[p]
            before += [torch.zeros_like(v) for v in now[len(before) :]]
            for current, old in zip(now, before):
                current.copy_(torch.where(keep, old, current))


def undo_host_steps(optimizer: torch.optim.Optimizer, count: int) -> None:
    """Take ``count`` bad steps of ``masked_step`` back off the host-held step counters
    (Adam's ``step``)."""
    if count <= 0:
        return
    for param, state in optimizer.state.items():
        step = state.get("step")
        if torch.is_tensor(step) and step.device != param.device:
            step -= count
        elif isinstance(step, (int, float)):
            state["step"] = step - count


class TF1Adam(Optimizer):
    """Adam as TensorFlow 1's ``tf.train.AdamOptimizer`` computes it (the released optimiser).

    At step t (1-based), for every parameter p with gradient g::

        lr_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t)
        m += (g - m) * (1 - beta1);  v += (g^2 - v) * (1 - beta2)
        p -= lr_t * m / (sqrt(v) + eps)

    ``torch.optim.Adam`` instead divides by ``sqrt(v / (1 - beta2^t)) + eps``: the same update
    but for where epsilon sits. Here its effective size is ``eps / sqrt(1 - beta2^t)``, 31.6x
    larger at step 1, which matters because clipping the global norm to 5 leaves many
    gradient entries near epsilon. The state (``step``, ``exp_avg`` = m, ``exp_avg_sq`` = v)
    has ``torch.optim.Adam``'s names and meaning, so either optimiser resumes the other's
    checkpoints.

    Args:
        params: parameters or parameter groups.
        lr: learning rate.
        betas: (beta1, beta2).
        eps: epsilon, added to sqrt(v).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every parameter that has a gradient; returns ``closure()`` or None."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            beta1, beta2 = group["betas"]
            states = [self.state[p] for p in params]
            for p, state in zip(params, states):
                if not state:
                    # A host counter, as torch.optim.Adam keeps it (undo_host_steps edits it).
                    state["step"] = torch.tensor(0.0, device="cpu")
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
            # TensorFlow's beta powers are one per optimiser, advanced by every update, so a
            # parameter whose first gradient comes late is still corrected with the global t:
            # the largest host counter, read as torch.optim.Adam reads it (no device sync).
            t = max(_get_value(s["step"]) for s in states)
            lr_t = group["lr"] * math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)
            grads = [p.grad for p in params]
            m = [s["exp_avg"] for s in states]
            v = [s["exp_avg_sq"] for s in states]
            torch._foreach_lerp_(m, grads, 1.0 - beta1)
            torch._foreach_lerp_(v, torch._foreach_mul(grads, grads), 1.0 - beta2)
            denom = torch._foreach_sqrt(v)
            torch._foreach_add_(denom, group["eps"])
            torch._foreach_addcdiv_(params, m, denom, value=-lr_t)
        return loss


def make_optimizer(cfg: CfgNode, model: nn.Module) -> Optimizer:
    """Adam over every trainable parameter (released: beta1 0.95, TensorFlow's beta2 and eps,
    TensorFlow 1's epsilon placement, ``TF1Adam``; SOLVER.ADAM "torch": ``torch.optim.Adam``).

    With ``SOLVER.DECODER_LR_FACTOR`` != 1 the decoder's parameters form a second group at
    ``BASE_LR * factor``; the scheduler scales both groups alike. 1.0 (released) keeps one group.
    ``model`` may be wrapped (DDP, torch.compile).
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
    adam = {"tf1": TF1Adam, "torch": Adam}[cfg.SOLVER.ADAM]
    return adam(
        groups,
        lr=cfg.SOLVER.BASE_LR,
        betas=(cfg.SOLVER.BETA1, cfg.SOLVER.BETA2),
        eps=cfg.SOLVER.EPS,
    )


class _LrFactor:
    """lr(it) / BASE_LR: exponential decay times an optional linear warm-up (an object rather
    than a closure so that the scheduler's state dict carries it)."""

    def __init__(self, decay_rate: float, decay_steps: int, warmup_iters: int) -> None:
        self.decay_rate, self.decay_steps, self.warmup_iters = decay_rate, decay_steps, warmup_iters

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
    """
    factor = _LrFactor(cfg.SOLVER.DECAY_RATE, cfg.SOLVER.DECAY_STEPS, cfg.SOLVER.WARMUP_ITERS)
    return LambdaLR(optimizer, lr_lambda=factor)
