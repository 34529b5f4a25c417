"""Training: ``train_step`` (one optimiser step) and ``do_train`` (the iteration loop).

One iteration: forward and backward over SOLVER.ACCUMULATE_STEPS micro-batches, gradient norm
and clipping, a finite check agreed by every rank (a non-finite loss or gradient skips the
step), the optimiser and scheduler steps, then, at their periods, scalar logs, image
summaries, the held-out evaluation and a checkpoint. ``tools/benchmark.py`` times the same
``Trainer.run_step``.

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
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from yacs.config import CfgNode

from lib.data.build import per_process_batch
from lib.engine.checkpoint import Checkpointer
from lib.engine.hooks import (
    HeldoutEvaluation,
    HookBase,
    ImageSummaries,
    NonFiniteError,  # noqa: F401  (re-exported: the tools catch it from here)
    PeriodicCheckpoint,
    PeriodicStats,
    ProgressBar,
)
from lib.engine.inference import Batch
from lib.engine.precision import autocast_factory, resolve_precision
from lib.engine.solver import masked_step
from lib.utils import comm


@dataclass
class StepResult:
    """What ``train_step`` did.

    Attributes:
        stats: named statistics of the step on the device: ``loss`` (scalar), ``nll`` and
            ``kl`` ((T+1,) per-step batch means), means over the micro-batches, and
            ``grad_norm`` (scalar, the global gradient norm before clipping).
        skipped: True when the step was not taken (non-finite loss or gradient on some rank);
            None with ``defer_check`` (read ``bad`` later).
        bad: 0-dim float32 on the device, 1.0 when the step was not taken, else 0.0 (agreed
            by every rank).
        images: (b, 3, H, W) the last micro-batch.
        out: the model's output on it.
    """

    stats: dict[str, torch.Tensor]
    skipped: bool | None
    bad: torch.Tensor
    images: torch.Tensor
    out: dict[str, torch.Tensor]


def _micro_batch_context(model: nn.Module, sync: bool):
    # DDP all-reduces gradients in backward; skip that for all but the last micro-batch.
    if not sync and isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
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
    defer_check: bool = False,
) -> StepResult:
    """One optimiser step: forward and backward, clip, check, update.

    Each micro-batch's loss (its own batch mean) is divided by the number of micro-batches
    before ``backward``, so with equal micro-batches the summed gradient is that of the mean
    over all of them. Then the global gradient norm is clipped at ``clip``, every rank agrees
    whether the loss or the norm is non-finite, and the optimiser steps, or the step is
    dropped. The scheduler, logs and checkpoints are the caller's.

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
        defer_check: decide on the device instead of the host: the optimiser always steps,
            then parameters and the optimiser state on the parameters' device are put back
            where the step was bad (``torch.where``), so no host sync happens. Optimiser
            state held on the host (Adam's ``step`` counter on a GPU run) still counts the bad
            step: the caller corrects it (``lib.engine.solver.undo_host_steps``) once it reads
            ``bad``.

    Returns:
        A ``StepResult``.
    """
    optimizer.zero_grad(set_to_none=True)
    count = len(micro_batches)
    losses, nlls, kls = [], [], []
    for index, batch in enumerate(micro_batches):
        images, extra = _unpack(batch)
        with _micro_batch_context(model, sync=index == count - 1):
            with autocast():
                out = model(images, **extra)
            (out["loss"] / count if count > 1 else out["loss"]).backward()
        losses.append(out["loss"].detach().float())
        nlls.append(out["nll"].float())
        kls.append(out["kl"].float())
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
    stats = {
        "loss": torch.stack(losses).mean(),
        "nll": torch.stack(nlls).mean(dim=0),  # (T+1,)
        "kl": torch.stack(kls).mean(dim=0),  # (T+1,)
        "grad_norm": grad_norm.float(),
    }
    # Every rank must skip the same steps, so the finite check is agreed on.
    bad = (~torch.isfinite(stats["loss"]) | ~torch.isfinite(grad_norm)).float().reshape(1)
    bad = comm.all_reduce_max(bad).reshape(())
    skipped = None
    if defer_check:
        masked_step(optimizer, params, bad)
    else:
        skipped = bool(bad.item() > 0)
        if skipped:
            optimizer.zero_grad(set_to_none=True)
        else:
            optimizer.step()
    return StepResult(stats, skipped, bad, images, out)


class _PeriodMeter:
    """Training statistics since the last read, kept on the device: no host sync per step.

    Per step it adds the good steps' named statistics (flattened in their order), counts good
    and bad steps and tracks the run of consecutive bad steps; ``read`` brings everything to
    the host in one transfer.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: torch.Tensor | None = None
        self.layout: list[tuple[str, int, bool]] = []  # (name, size, scalar) of each statistic
        # [good steps, bad steps, current run of bad steps, longest run] since the last read;
        # the current run carries over a read.
        self.counts = torch.zeros(4, dtype=torch.float64, device=device)
        self.images = 0
        self.start = time.perf_counter()

    def add(self, stats: dict[str, torch.Tensor], bad: torch.Tensor) -> None:
        """stats: this step's named statistics; bad: 0-dim, 1.0 when the step was skipped."""
        if not self.layout:  # the same names and sizes every step
            self.layout = [(k, v.numel(), v.dim() == 0) for k, v in stats.items()]
        values = torch.cat([v.detach().reshape(-1).double() for v in stats.values()])
        bad = bad.detach().double()
        good_values = torch.where(bad > 0, torch.zeros_like(values), values)
        self.sums = good_values if self.sums is None else self.sums + good_values
        good, skipped, run, longest = self.counts.unbind()
        run = (run + 1) * bad
        self.counts = torch.stack([good + 1 - bad, skipped + bad, run, torch.maximum(longest, run)])

    def read(self) -> tuple[dict[str, Any] | None, dict[str, int], float]:
        """The period's mean statistics by name (floats, lists for per-step ones; averaged over
        ranks; None if no good step), the step counts (``good``, ``bad``, ``run``,
        ``longest``) and images/s; one host sync; resets."""
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
        if not counts["good"]:
            return None, counts, rate
        means, start = {}, 4
        for name, size, scalar in self.layout:
            means[name] = host[start] if scalar else host[start : start + size]
            start += size
        return means, counts, rate


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

    Attributes:
        iter: the current iteration; ``step``: its ``StepResult``; ``lr``: its learning rate;
        ``meter``: device statistics since the last read; ``stop``: set by a hook to end the
        loop after the current iteration.
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
        self.last_mean: dict[str, Any] | None = None
        self.last_eval: dict[str, Any] | None = None
        self.skipped_steps = 0
        self._data_iter = None

    def run_step(self) -> StepResult:
        """One iteration's optimiser step (no host sync); returns its ``StepResult``."""
        if self._data_iter is None:  # run_step called directly (the benchmark), not by train()
            self._data_iter = iter(self.data_loader)
        micro_batches = [
            _batch_to_device(next(self._data_iter), self.device) for _ in range(self.accumulate)
        ]
        self.lr = self.optimizer.param_groups[0]["lr"]
        step = train_step(
            self.model, self.optimizer, micro_batches, self.params, self.clip, self.autocast,
            defer_check=True,
        )  # fmt: skip
        images = sum(_unpack(b)[0].shape[0] for b in micro_batches)
        self.meter.images += images * comm.get_world_size()
        self.meter.add(step.stats, step.bad)
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
