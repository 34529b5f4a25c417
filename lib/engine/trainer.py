"""Training: ``train_step`` (one optimiser step) and ``do_train`` (the iteration loop).

One iteration: forward and backward over SOLVER.ACCUMULATE_STEPS micro-batches, gradient norm
and clipping, a finite check agreed by every rank (a non-finite loss or gradient skips the
step), the optimiser and scheduler steps, then, at their periods, scalar logs, image
summaries, the held-out evaluation and a checkpoint. ``tools/benchmark.py`` times the same
``train_step``.

Host syncs: ``do_train`` decides the finite check on the device (a bad step's update is undone
with ``torch.where``) and keeps its statistics there, reading them once per LOG.PERIOD and
before each checkpoint. So the GPU is never waited on between those reads (the host loads the
next batch while it computes), a skipped step is logged up to LOG.PERIOD iterations late, and
SOLVER.MAX_NONFINITE stops the run at the first read after the limit, before any checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from yacs.config import CfgNode

from lib.data.build import per_process_batch
from lib.engine.checkpoint import (
    LAST_CHECKPOINT,
    Checkpointer,
    CheckpointError,
    read_checkpoint,
    set_rng_states,
)
from lib.engine.hooks import (
    HeldoutEvaluation,
    HookBase,
    ImageSummaries,
    NonFiniteError,  # noqa: F401  (re-exported: the tools catch it from here)
    PeriodicCheckpoint,
    PeriodicStats,
    ProgressBar,
)
from lib.engine.precision import autocast_factory, resolve_precision
from lib.engine.setup import seed_all
from lib.errors import ConfigError
from lib.utils import comm

Batch = tuple[torch.Tensor, "torch.Tensor | None"]
PhaseFactory = Callable[[str], contextlib.AbstractContextManager]


def make_heldout_batches(
    dataset: Any, num_images: int, batch_size: int, rank: int = 0, world_size: int = 1
) -> list[Batch]:
    """The fixed held-out batch evaluated during training: this rank's share, in memory.

    Args:
        dataset: the first test dataset; items ``(image (3, H, W), mask (H, W) or None)``.
        num_images: how many leading images to use (TEST.EVAL_NUM_IMAGES; capped at its size).
        batch_size: images per forward pass on this rank.
        rank, world_size: this process's shard is indices rank::world_size (no padding), as
            ``do_evaluate`` expects.

    Returns:
        List of ``(images (b, 3, H, W), masks (b, H, W) or None)``; empty if the shard is.
    """
    indices = list(range(rank, min(num_images, len(dataset)), world_size))
    batches: list[Batch] = []
    for start in range(0, len(indices), batch_size):
        items = [dataset[i] for i in indices[start : start + batch_size]]
        images = torch.stack([item[0] for item in items])
        masks = None
        if all(item[1] is not None for item in items):
            masks = torch.stack([torch.as_tensor(item[1], device="cpu") for item in items])
        batches.append((images, masks))
    return batches


@dataclass
class StepResult:
    """What ``train_step`` did.

    Attributes:
        values: (1 + 2 (T+1),) float32: [loss, nll_0..T, kl_0..T], means over the micro-batches.
        grad_norm: scalar, the global gradient norm before clipping.
        skipped: True when the step was not taken (non-finite loss or gradient on some rank);
            None with ``defer_check`` (read ``bad`` later).
        bad: 0-dim float32 on the device, 1.0 when the step was not taken, else 0.0 (agreed
            by every rank).
        images: (b, 3, H, W) the last micro-batch.
        out: the model's output on it.
    """

    values: torch.Tensor
    grad_norm: torch.Tensor
    skipped: bool | None
    images: torch.Tensor
    out: dict[str, torch.Tensor]
    bad: torch.Tensor


def _micro_batch_context(model: nn.Module, sync: bool):
    # DDP all-reduces gradients in backward; skip that for all but the last micro-batch.
    if not sync and isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def _no_phase(_: str) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def _unpack(batch: Any) -> tuple[torch.Tensor, dict]:
    # A micro-batch is images, or (images, labels, factors) when the factor regressor is fed.
    if torch.is_tensor(batch):
        return batch, {}
    images, labels, factors = batch
    return images, {"labels": labels, "factors": factors}


def images_to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a batch of images to the device as float32 in [0, 1].

    Args:
        images: (B, 3, H, W) float in [0, 1], or uint8 in 0..255 (a quarter of the bytes to
            copy), converted on the device as the datasets convert: float32 then ``/ 255``,
            so the values are bitwise the same.

    Returns:
        (B, 3, H, W) float on ``device``.
    """
    images = images.to(device, non_blocking=True)
    if images.dtype == torch.uint8:
        images = images.to(torch.float32).div_(255.0)
    return images


def _batch_to_device(batch: Sequence, device: torch.device) -> Any:
    # (images, masks) -> images; (images, labels, factors) from a loader built with factors
    # (``make_data_loader(with_factors=True)``) feeds the factor regressor too.
    if len(batch) < 3:
        return images_to_device(batch[0], device)
    images, labels, factors = batch
    return (
        images_to_device(images, device),
        labels.to(device, non_blocking=True),
        {k: v.to(device, non_blocking=True) for k, v in factors.items()},
    )


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[torch.Tensor],
    params: Sequence[torch.Tensor],
    clip: float = math.inf,
    autocast: Callable[[], Any] = contextlib.nullcontext,
    phase: PhaseFactory | None = None,
    defer_check: bool = False,
    region: StepRegion | None = None,
) -> StepResult:
    """One optimiser step over micro-batches whose gradients add up to the batch mean.

    Each micro-batch's loss (its own batch mean) is divided by the number of micro-batches
    before ``backward``, so with equal micro-batches the summed gradient is that of the mean
    over all of them. Then the gradient norm is clipped at ``clip``, every rank agrees whether
    the loss or the norm is non-finite, and the optimiser steps, or the gradients are dropped.
    The scheduler, logs and checkpoints are the caller's.

    Args:
        model: returns a dict with ``loss`` (scalar), ``nll`` and ``kl`` ((T+1,) each); may be
            wrapped in DistributedDataParallel (gradients are synchronised once, in the last
            micro-batch's backward).
        optimizer: its optimiser.
        micro_batches: (b, 3, H, W) image batches on the model's device, at least one; or
            ``(images, labels (b, H, W), factors {name: (b, L, ...)})`` tuples feeding the
            model's factor regressor.
        params: the trainable parameters (clipped together).
        clip: global gradient-norm limit (``math.inf``: no clipping).
        autocast: factory of the forward's context (``lib.engine.precision.autocast_factory``).
        phase: ``name -> context`` timing the ``"backward"`` and ``"optimizer"`` parts (the
            benchmark's timer); None: untimed.
        defer_check: decide on the device instead of the host: the optimiser always steps,
            then parameters and the optimiser state on the parameters' device are put back
            where the step was bad (``torch.where``), so no host sync happens. Optimiser
            state held on the host (Adam's ``step`` counter when not capturable) still counts
            the bad step: the caller corrects it (``undo_host_steps``) once it reads ``bad``.
        region: None (eager), or ``compile_step_region``'s compiled forward, backward, clipping
            and finite check (``autocast`` is then the region's own, ``phase`` times only the
            optimiser, and the check is deferred whatever ``defer_check`` says).

    Returns:
        A ``StepResult``.
    """
    phase = phase or _no_phase
    with phase("optimizer"):
        optimizer.zero_grad(set_to_none=True)
    if region is not None:
        # The compiled forward/backward/check region: no phase timing inside (compiled code
        # has no phase boundaries), and the check is always decided on the device.
        mean_values, grad_norm, bad, images, out = region(model, micro_batches, params, clip)
        with phase("optimizer"):
            _masked_step(optimizer, params, bad)
        return StepResult(mean_values, grad_norm, None, images, out, bad)
    mean_values, images, out = _forward_backward(model, micro_batches, autocast, phase)
    with phase("optimizer"):
        grad_norm, bad = _clip_and_check(params, clip, mean_values)
        skipped = None
        if defer_check:
            _masked_step(optimizer, params, bad)
        else:
            skipped = bool(bad.item() > 0)
            if skipped:
                optimizer.zero_grad(set_to_none=True)
            else:
                optimizer.step()
    return StepResult(mean_values, grad_norm, skipped, images, out, bad)


def _forward_backward(
    model: nn.Module,
    micro_batches: Sequence[Any],
    autocast: Callable[[], Any],
    phase: PhaseFactory,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Forward and backward of every micro-batch (gradients summed in ``.grad``).

    Returns:
        ``(mean_values, images, out)``: the (1 + 2 (T+1),) float32 means over the micro-batches,
        the last micro-batch's images and the model's output on it.
    """
    count = len(micro_batches)
    values = []
    for index, batch in enumerate(micro_batches):
        images, extra = _unpack(batch)
        with _micro_batch_context(model, sync=index == count - 1):
            with autocast():
                out = model(images, **extra)
            loss = out["loss"] if count == 1 else out["loss"] / count
            with phase("backward"):
                loss.backward()
        values.append(torch.cat([out["loss"].detach()[None], out["nll"], out["kl"]]))
    mean_values = torch.stack(values).float().mean(dim=0)
    return mean_values, images, out


def _clip_and_check(
    params: Sequence[torch.Tensor], clip: float, mean_values: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip the global gradient norm; ``bad`` (0-dim float32) is 1.0 when the loss or the norm
    is non-finite on some rank.

    Returns:
        ``(grad_norm, bad)``.
    """
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
    # Every rank must skip the same steps, so the finite check is agreed on.
    bad = (~torch.isfinite(mean_values[0]) | ~torch.isfinite(grad_norm)).float().reshape(1)
    bad = comm.all_reduce_max(bad).reshape(())
    return grad_norm, bad


StepRegion = Callable[
    [nn.Module, Sequence[Any], Sequence[torch.Tensor], float],
    tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]],
]
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_step_region(
    autocast: Callable[[], Any], mode: str = "default", backend: str = "inductor"
) -> StepRegion:
    """``torch.compile`` the part of a training step between ``zero_grad`` and the update.

    The region is forward and backward of every micro-batch, the gradient clipping and the
    finite check (SOLVER.COMPILE_STEP); ``zero_grad`` (which dynamo will not trace) and the
    masked Adam update (whose float learning rate, changed by the scheduler every
    iteration, would be a recompile per iteration) stay eager around it. ``dynamic=False``:
    the shapes are fixed for a run, and a shape change recompiles rather than going symbolic.
    The model's inner ``autograd.grad`` and ``loss.backward()`` break the graph; the pieces in
    between are compiled, their backward too (AOTAutograd).

    Args:
        autocast: the forward's context factory (``autocast_factory``), traced into the region.
        mode: SOLVER.COMPILE_MODE, one of ``COMPILE_MODES`` (inductor only; "reduce-overhead"
            and "max-autotune" use CUDA graphs).
        backend: SOLVER.COMPILE_BACKEND: "inductor", or "aot_eager" / "eager" (the same graph
            capture with eager kernels: debugging and CPU tests).

    Returns:
        ``region(model, micro_batches, params, clip) -> (mean_values, grad_norm, bad, images,
        out)``.

    Raises:
        ConfigError: an unknown mode.
    """
    if mode not in COMPILE_MODES:
        raise ConfigError(f"SOLVER.COMPILE_MODE must be one of {COMPILE_MODES}, got {mode!r}")

    def region(
        model: nn.Module, micro_batches: Sequence[Any], params: Sequence[torch.Tensor], clip: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        mean_values, images, out = _forward_backward(model, micro_batches, autocast, _no_phase)
        grad_norm, bad = _clip_and_check(params, clip, mean_values)
        return mean_values, grad_norm, bad, images, out

    if backend != "inductor":
        return torch.compile(region, backend=backend, dynamic=False)
    from torch._inductor import list_mode_options

    # fallback_random: inductor draws the training noise with torch's own generator, as eager
    # does, so a compiled step gets the same noise (and the same numbers up to rounding).
    # ``torch.compile`` takes a mode or options, not both: the mode's options plus this one.
    options = {**list_mode_options(mode, False), "fallback_random": True}
    return torch.compile(region, backend=backend, dynamic=False, options=options)


def compile_step_mode(cfg: CfgNode) -> str | None:
    """The ``Trainer``'s ``compile_mode``: SOLVER.COMPILE_MODE when SOLVER.COMPILE_STEP, else None.

    Args:
        cfg: the config.

    Returns:
        The mode, or None for the eager (released) step.
    """
    return cfg.SOLVER.COMPILE_MODE if cfg.SOLVER.COMPILE_STEP else None


def _device_state(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> list[torch.Tensor]:
    state = optimizer.state.get(param, {})
    return [v for v in state.values() if torch.is_tensor(v) and v.device == param.device]


def _masked_step(
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
    """Take ``count`` bad steps back off the host-held step counters (Adam's ``step``).

    Args:
        optimizer: the optimiser ``train_step(defer_check=True)`` stepped.
        count: how many of its steps were bad.
    """
    if count <= 0:
        return
    for param, state in optimizer.state.items():
        step = state.get("step")
        if torch.is_tensor(step) and step.device != param.device:
            step -= count
        elif isinstance(step, (int, float)):
            state["step"] = step - count


class _PeriodMeter:
    """Training statistics since the last read, kept on the device: no host sync per step.

    Per step it adds the good steps' values, counts good and bad steps and tracks the run of
    consecutive bad steps; ``read`` brings everything to the host in one transfer.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: torch.Tensor | None = None
        # [good steps, bad steps, current run of bad steps, longest run] since the last read;
        # the current run carries over a read.
        self.counts = torch.zeros(4, dtype=torch.float64, device=device)
        self.images = 0
        self.start = time.perf_counter()

    def add(self, values: torch.Tensor, bad: torch.Tensor) -> None:
        """values: (V,) this step's statistics; bad: 0-dim, 1.0 when the step was skipped."""
        values, bad = values.detach().double(), bad.detach().double()
        good_values = torch.where(bad > 0, torch.zeros_like(values), values)
        self.sums = good_values if self.sums is None else self.sums + good_values
        good, skipped, run, longest = self.counts.unbind()
        run = (run + 1) * bad
        self.counts = torch.stack([good + 1 - bad, skipped + bad, run, torch.maximum(longest, run)])

    def read(self) -> tuple[list[float] | None, dict[str, int], float]:
        """The period's mean values (averaged over ranks; None if no good step), the step
        counts (``good``, ``bad``, ``run``, ``longest``) and images/s; one host sync; resets."""
        good = self.counts[0]
        mean = None
        if self.sums is not None:
            mean = comm.all_reduce_mean(self.sums / good.clamp(min=1))
        packed = self.counts if mean is None else torch.cat([self.counts, mean])
        host = packed.tolist()  # the one host sync of the period
        counts = dict(zip(("good", "bad", "run", "longest"), (int(v) for v in host[:4])))
        elapsed = time.perf_counter() - self.start
        rate = self.images / elapsed if elapsed > 0 else 0.0
        self.sums, self.images = None, 0
        self.counts = torch.tensor(
            [0.0, 0.0, host[2], host[2]], dtype=torch.float64, device=self.device
        )
        self.counts = self.counts.to(self.device)
        self.start = time.perf_counter()
        return (host[4:] if counts["good"] else None), counts, rate


def resume_or_start(
    cfg: CfgNode,
    checkpointer: Checkpointer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    logger: logging.Logger,
) -> int:
    """Restore a run from ``OUTPUT_DIR/last_checkpoint``, or start fresh (from MODEL.WEIGHT).

    Also seeds this rank's noise stream: the checkpoint's RNG states when it has one per
    process, else ``SEED + rank`` (plus an offset on a resume with another process count).

    Args:
        cfg: the config (SOLVER.RESUME, MODEL.WEIGHT, SEED, OUTPUT_DIR, the schedule keys).
        checkpointer: holds the model, optimiser and scheduler.
        scheduler: from ``make_lr_scheduler``; a resumed run keeps the checkpoint's schedule
            (a warning names each key whose config value differs).
        logger: where the start is reported.

    Returns:
        The completed iterations to start after (0 on a fresh start).

    Raises:
        CheckpointError: an unreadable or mismatched checkpoint or MODEL.WEIGHT, or MODEL.WEIGHT
            set while OUTPUT_DIR holds a checkpoint to resume (the message says how to choose).
    """
    rank, world = comm.get_rank(), comm.get_world_size()
    last = checkpointer.last_checkpoint() if cfg.SOLVER.RESUME else None
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
            logger.warning(
                "checkpoint has RNG states of %d processes, this run has %d: reseeding",
                len(rng),
                world,
            )
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
            "checkpoints (the oldest are deleted as new ones are written)",
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
            logger.warning(
                "%s = %s in the config, but the resumed checkpoint's schedule uses %s: "
                "the checkpoint's value is kept (start a new OUTPUT_DIR to change it)",
                key,
                wanted,
                value,
            )


class Trainer:
    """The training loop: ``run_step`` each iteration, then the hooks, in list order.

    ``run_step`` is one optimiser step over SOLVER.ACCUMULATE_STEPS micro-batches
    (``train_step`` with the finite check decided on the device, so no host sync), the
    statistics added to ``meter`` on the device, and the scheduler step. Everything else
    (logs, the non-finite stop, pictures, evaluation, checkpoints, a progress bar, timing)
    is a hook (``lib.engine.hooks``).

    Args:
        model: IODINE, possibly wrapped in DistributedDataParallel.
        optimizer: its optimiser.
        data_loader: endless iterable of ``(images, masks)`` or ``(images, labels, factors)``
            batches (factors: the loader was built with them).
        scheduler: per-iteration LR scheduler, or None (the benchmark).
        device: where the model runs.
        start_iter: completed iterations; the loop runs ``start_iter + 1 .. max_iter``.
        max_iter: the last iteration.
        hooks: the hooks.
        accumulate: micro-batches per iteration (SOLVER.ACCUMULATE_STEPS).
        clip: global gradient-norm limit (``math.inf``: none).
        autocast: the forward's context factory.
        compile_mode: None (eager, released), or SOLVER.COMPILE_MODE: the step between
            ``zero_grad`` and the update runs compiled (``compile_step_region``), built on the
            first iteration.
        compile_backend: SOLVER.COMPILE_BACKEND ("inductor"; "aot_eager" / "eager" in tests).

    Attributes:
        iter: the current iteration; ``step``: its ``StepResult``; ``lr``: its learning rate;
        ``meter``: device statistics since the last read; ``stop``: set by a hook to end the
        loop after the current iteration; ``phase``: a timing context factory passed to
        ``train_step`` (the benchmark's instrumented steps), else None; with a compiled step
        only the optimiser is timed (the model's phases run inside the compiled region).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        data_loader: Iterable,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        device: torch.device,
        start_iter: int,
        max_iter: int,
        hooks: Sequence[HookBase] = (),
        accumulate: int = 1,
        clip: float = math.inf,
        autocast: Callable[[], Any] = contextlib.nullcontext,
        compile_mode: str | None = None,
        compile_backend: str = "inductor",
    ) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.data_loader, self.device = data_loader, device
        self.start_iter, self.max_iter = start_iter, max_iter
        self.hooks = list(hooks)
        self.accumulate, self.clip, self.autocast = accumulate, clip, autocast
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.meter = _PeriodMeter(device)
        self.iter = start_iter
        self.step: StepResult | None = None
        self.lr = optimizer.param_groups[0]["lr"]
        self.stop = False
        self.phase: PhaseFactory | None = None
        self.last_mean: list[float] | None = None
        self.last_eval: dict[str, Any] | None = None
        self.skipped_steps = 0
        self.train_seconds = 0.0
        self._data_iter = None
        self.region: StepRegion | None = None
        if compile_mode is not None:
            # Built here, compiled lazily by torch.compile on its first call.
            self.region = compile_step_region(autocast, compile_mode, compile_backend)

    def run_step(self) -> StepResult:
        """One iteration's optimiser step (no host sync); returns its ``StepResult``."""
        micro_batches = [
            _batch_to_device(next(self._data_iter), self.device) for _ in range(self.accumulate)
        ]
        self.lr = self.optimizer.param_groups[0]["lr"]
        step = train_step(
            self.model, self.optimizer, micro_batches, self.params, self.clip, self.autocast,
            self.phase, defer_check=True, region=self.region,
        )  # fmt: skip
        images = sum(_unpack(b)[0].shape[0] for b in micro_batches)
        self.meter.images += images * comm.get_world_size()
        stats = torch.cat(
            [step.values.to(step.grad_norm.device), step.grad_norm.reshape(1).float()]
        )
        self.meter.add(stats, step.bad)
        if self.scheduler is not None:
            self.scheduler.step()
        self.step = step
        return step

    def train(self) -> None:
        """Run the iterations; the hooks' ``after_train`` runs also when one raises."""
        # Creating a DataLoader iterator draws a base seed from torch's global generator;
        # undo that draw so the training noise depends only on the restored RNG state, and a
        # resumed run continues exactly as the uninterrupted one would.
        rng_state = torch.get_rng_state()
        self._data_iter = iter(self.data_loader)
        torch.set_rng_state(rng_state)
        self.model.train()
        try:
            for hook in self.hooks:
                hook.before_train(self)
            for iteration in range(self.start_iter + 1, self.max_iter + 1):
                self.iter = iteration
                for hook in self.hooks:
                    hook.before_step(self)
                self.run_step()
                for hook in self.hooks:
                    start = time.perf_counter()
                    hook.after_step(self)
                    if not hook.training_time:  # images/s measures training alone
                        self.meter.start += time.perf_counter() - start
                if self.stop:
                    break
        finally:
            for hook in self.hooks:
                hook.after_train(self)


def _training_hooks(
    cfg: CfgNode,
    checkpointer: Checkpointer,
    device: torch.device,
    heldout: Sequence[Batch] | None,
    heldout_name: str,
    writer: Any,
    logger: logging.Logger,
) -> list[HookBase]:
    """The hooks of a training run, in the order they run after each step.

    ``PeriodicStats`` comes first: past SOLVER.MAX_NONFINITE bad steps it raises before
    ``PeriodicCheckpoint`` can write that iteration's checkpoint.

    Args:
        cfg: the run's config (LOG, SOLVER, TEST sections).
        checkpointer: saves every SOLVER.CHECKPOINT_PERIOD iterations and at the end.
        device: where the model runs.
        heldout: this rank's share of the fixed evaluation batch, or None (no evaluation hook).
        heldout_name: its dataset name (logs and TensorBoard tags).
        writer: TensorBoard SummaryWriter on rank 0, None elsewhere.
        logger: where to log.

    Returns:
        ``PeriodicStats``, ``ImageSummaries``, ``HeldoutEvaluation`` (with ``heldout``),
        ``PeriodicCheckpoint`` and ``ProgressBar``.
    """
    # Recorded in each checkpoint: evaluation divides the gradient inputs by it.
    batch = per_process_batch(cfg, comm.get_world_size())
    hooks: list[HookBase] = [
        PeriodicStats(
            cfg.LOG.PERIOD, cfg.SOLVER.CHECKPOINT_PERIOD, cfg.SOLVER.MAX_NONFINITE, writer, logger
        ),
        ImageSummaries(writer, cfg.LOG.IMAGE_PERIOD, cfg.LOG.NUM_IMAGES),
    ]
    if heldout is not None:
        hooks.append(
            HeldoutEvaluation(
                cfg, heldout, heldout_name, cfg.TEST.EVAL_PERIOD, device, writer, logger
            )
        )
    hooks += [
        PeriodicCheckpoint(
            checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD, cfg.dump(), {"per_process_batch": batch}
        ),
        ProgressBar(),
    ]
    return hooks


def do_train(
    cfg: CfgNode,
    model: nn.Module,
    data_loader: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    checkpointer: Checkpointer,
    device: torch.device,
    start_iter: int,
    heldout: Sequence[Batch] | None = None,
    heldout_name: str = "heldout",
    writer: Any = None,
    logger: logging.Logger | None = None,
) -> dict[str, Any]:
    """Train from iteration ``start_iter`` to SOLVER.MAX_ITER: a ``Trainer`` with the hooks of
    a training run (``_training_hooks``).

    Collective in a distributed run: every rank calls it; rank 0 alone writes (its
    ``writer`` and ``checkpointer.save_to_disk``).

    Args:
        cfg: the run's config (SOLVER, TEST, LOG sections).
        model: IODINE, possibly wrapped in DistributedDataParallel; returns a dict with
            ``loss`` (scalar), ``nll``, ``kl`` (T+1,), ``recon``, ``masks``, ``components``.
        data_loader: endless iterator of ``(images (b, 3, H, W), masks or None)`` (or with
            factors), b the per-process micro-batch.
        optimizer: Adam from ``make_optimizer``.
        scheduler: per-iteration scheduler from ``make_lr_scheduler`` (its ``last_epoch`` is
            ``start_iter``).
        checkpointer: saves every SOLVER.CHECKPOINT_PERIOD iterations and at the end.
        device: where the model runs.
        start_iter: completed iterations (0 on a fresh start, the checkpoint's on resume).
        heldout: this rank's share of the fixed evaluation batch (``make_heldout_batches``),
            evaluated every TEST.EVAL_PERIOD iterations and at the end; None = never.
        heldout_name: its dataset name (logs and TensorBoard tags).
        writer: TensorBoard SummaryWriter on rank 0, None elsewhere.
        logger: where to log.

    Returns:
        ``{"iteration", "skipped_steps", "last_eval"}``: the final iteration, the number of
        skipped non-finite steps and the last held-out metrics (or None).

    Raises:
        NonFiniteError: SOLVER.MAX_NONFINITE consecutive steps were non-finite; no
            checkpoint is written after the last good one.
    """
    logger = logger or logging.getLogger(__name__)
    clip = cfg.SOLVER.GRAD_CLIP_NORM if cfg.SOLVER.GRAD_CLIP_NORM > 0 else math.inf
    hooks = _training_hooks(cfg, checkpointer, device, heldout, heldout_name, writer, logger)
    trainer = Trainer(
        model, optimizer, data_loader, scheduler, device, start_iter, cfg.SOLVER.MAX_ITER,
        hooks, cfg.SOLVER.ACCUMULATE_STEPS, clip,
        autocast_factory(resolve_precision(cfg, device, warn=False), device),
        compile_step_mode(cfg), cfg.SOLVER.COMPILE_BACKEND,
    )  # fmt: skip
    logger.info("start training at iteration %d of %d", start_iter, cfg.SOLVER.MAX_ITER)
    trainer.train()
    if writer is not None:
        writer.flush()
    logger.info(
        "training done at iteration %d (%d steps skipped)", trainer.iter, trainer.skipped_steps
    )
    return {
        "iteration": trainer.iter,
        "skipped_steps": trainer.skipped_steps,
        "last_eval": trainer.last_eval,
    }
