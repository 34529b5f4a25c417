"""Training: ``train_step`` (one optimiser step), ``Trainer`` (the loop) and ``do_train``.

An iteration is ``train_step`` over SOLVER.ACCUMULATE_STEPS micro-batches, the scheduler step,
then the hooks (``lib.engine.hooks``). The finite check is decided on the device and the
statistics stay there until ``Trainer.read_stats`` brings them to the host, once per LOG.PERIOD
and before each checkpoint: the host never waits for the GPU in between, a skipped step is
logged up to LOG.PERIOD iterations late, and SOLVER.MAX_NONFINITE consecutive bad steps stop
the run at that read, before any checkpoint. SIGTERM (preemption; torchrun forwards it) and
SIGINT end the run at the next step boundary, agreed by every rank, with a checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn
from yacs.config import CfgNode

from lib.data.build import per_process_batch
from lib.engine.checkpoint import Checkpointer
from lib.engine.hooks import (
    HeldoutEvaluation,
    HookBase,
    ImageSummaries,
    PeriodicCheckpoint,
    ProgressBar,
    ScalarLogs,
)
from lib.engine.inference import Batch
from lib.engine.precision import autocast_factory
from lib.engine.solver import masked_step, undo_host_steps
from lib.errors import STOP_SIGNALS, Interrupted, IodineError
from lib.utils import comm


class NonFiniteError(IodineError, RuntimeError):
    """Training produced SOLVER.MAX_NONFINITE consecutive non-finite losses or gradients."""


@dataclass
class StepResult:
    """What ``train_step`` did: ``stats`` on the device by name (``loss``, ``nll`` and ``kl``
    (T+1,) per step, means over the micro-batches; ``grad_norm`` before clipping); ``skipped``
    (None with ``defer_check``); ``bad`` (0-dim, 1.0 when the step was not taken, the same on
    every rank); ``images`` (b, 3, H, W), the last micro-batch, and ``out``, the model's output.
    """

    stats: dict[str, torch.Tensor]
    skipped: bool | None
    bad: torch.Tensor
    images: torch.Tensor
    out: dict[str, torch.Tensor]


def _unpack(batch: Any) -> tuple[torch.Tensor, dict]:
    # A micro-batch is images, or (images, labels, factors) when the factor regressor is fed.
    if torch.is_tensor(batch):
        return batch, {}
    images, labels, factors = batch
    return images, {"labels": labels, "factors": factors}


def images_to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(B, 3, H, W) images to the device as float32 in [0, 1]: uint8 (a quarter of the bytes
    to copy) is converted there as the datasets convert (float32, then ``/ 255``), bitwise."""
    images = images.to(device, non_blocking=True)
    if images.dtype == torch.uint8:
        images = images.to(torch.float32).div_(255.0)
    return images


def _batch_to_device(batch: Sequence, device: torch.device) -> Any:
    # (images, masks) -> images; (images, labels, factors) also feeds the factor regressor.
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
    micro_batches: Sequence[Any],
    params: Sequence[torch.Tensor],
    clip: float = math.inf,
    autocast: Callable[[], Any] = contextlib.nullcontext,
    defer_check: bool = False,
) -> StepResult:
    """One optimiser step: forward and backward, clip, check, update.

    Each micro-batch's loss (its batch mean) is divided by their number before ``backward``:
    the summed gradient is that of the mean over equal micro-batches.

    Args:
        model: returns ``loss`` (scalar), ``nll`` and ``kl`` ((T+1,) each); may be wrapped in
            DDP (gradients synchronised once, in the last micro-batch's backward).
        optimizer: its optimiser.
        micro_batches: (b, 3, H, W) images on the model's device, or ``(images, labels
            (b, H, W), factors {name: (b, L, ...)})`` feeding the factor regressor.
        params: the trainable parameters (clipped together).
        clip: global gradient-norm limit (``math.inf``: no clipping).
        autocast: factory of the forward's context (``autocast_factory``).
        defer_check: no host sync: the optimiser always steps and ``masked_step`` puts the
            device state back after a bad step; host-held counters (Adam's ``step``) are the
            caller's to correct (``undo_host_steps``).
    """
    optimizer.zero_grad(set_to_none=True)
    count = len(micro_batches)
    losses, nlls, kls = [], [], []
    for index, batch in enumerate(micro_batches):
        images, extra = _unpack(batch)
        ddp = isinstance(model, nn.parallel.DistributedDataParallel)
        # DDP all-reduces gradients in backward: only in the last micro-batch's.
        sync = model.no_sync() if ddp and index < count - 1 else contextlib.nullcontext()
        with sync:
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


class PeriodStats(NamedTuple):
    """The statistics since the last read: ``mean`` by name (floats, lists for per-step ones,
    averaged over ranks; None without a good step), ``counts`` (``good``, ``bad``, ``run``,
    ``longest``: steps, and the current and longest runs of bad ones) and ``images_per_s``."""

    mean: dict[str, Any] | None
    counts: dict[str, int]
    images_per_s: float


class _PeriodMeter:
    """Sums of the good steps' statistics and step counts, on the device (no sync per step)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: torch.Tensor | None = None
        self.layout: list[tuple[str, int, bool]] = []  # (name, size, scalar) of each statistic
        # [good, bad, current run of bad, longest run]; the current run carries over a read.
        self.counts = torch.zeros(4, dtype=torch.float64, device=device)
        self.images = 0
        self.start = time.perf_counter()

    def add(self, stats: dict[str, torch.Tensor], bad: torch.Tensor) -> None:
        """stats: this step's statistics by name; bad: 0-dim, 1.0 when the step was skipped."""
        if not self.layout:  # the same names and sizes every step
            self.layout = [(k, v.numel(), v.dim() == 0) for k, v in stats.items()]
        values = torch.cat([v.detach().reshape(-1).double() for v in stats.values()])
        bad = bad.detach().double()
        good_values = torch.where(bad > 0, torch.zeros_like(values), values)
        self.sums = good_values if self.sums is None else self.sums + good_values
        good, skipped, run, longest = self.counts.unbind()
        run = (run + 1) * bad
        self.counts = torch.stack([good + 1 - bad, skipped + bad, run, torch.maximum(longest, run)])

    def read(self) -> PeriodStats:
        """The period's ``PeriodStats`` in one host sync; starts the next period."""
        mean = None
        if self.sums is not None:
            mean = comm.all_reduce_mean(self.sums / self.counts[0].clamp(min=1))
        host = (self.counts if mean is None else torch.cat([self.counts, mean])).tolist()
        counts = dict(zip(("good", "bad", "run", "longest"), (int(v) for v in host[:4])))
        elapsed = time.perf_counter() - self.start
        rate = self.images / elapsed if elapsed > 0 else 0.0
        self.sums, self.images, self.start = None, 0, time.perf_counter()
        self.counts = torch.tensor(
            [0.0, 0.0, host[2], host[2]], dtype=torch.float64, device=self.device
        )
        if not counts["good"]:
            return PeriodStats(None, counts, rate)
        means, start = {}, 4
        for name, size, scalar in self.layout:
            means[name] = host[start] if scalar else host[start : start + size]
            start += size
        return PeriodStats(means, counts, rate)


class Trainer:
    """The training loop: ``run_step`` each iteration, then the hooks (in any order).

    Args:
        data_loader: endless iterable of ``(images, masks)`` or ``(images, labels, factors)``.
        scheduler: per-iteration LR scheduler, or None (the benchmark).
        start_iter: completed iterations; the loop runs ``start_iter + 1 .. max_iter``.
        accumulate, clip, autocast: SOLVER.ACCUMULATE_STEPS, the clipping norm and the
            forward's context factory (``train_step``).
        max_nonfinite: consecutive skipped steps that stop the run (SOLVER.MAX_NONFINITE).
        model, optimizer, device, hooks, logger: as named.

    Attributes:
        iter: the current iteration; ``step``: its ``StepResult``; ``lr``: its learning rate;
        ``skipped_steps``: skipped steps found so far; ``stop``: set by a hook to end the loop
        after this iteration; ``stop_signal``: the signal ending it there (0: none; the
        same on every rank); ``last_eval``: the last held-out metrics.
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
        *,
        max_nonfinite: float = math.inf,
        logger: logging.Logger | None = None,
    ) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.data_loader, self.device = data_loader, device
        self.start_iter, self.max_iter = start_iter, max_iter
        self.hooks = list(hooks)
        self.accumulate, self.clip, self.autocast = accumulate, clip, autocast
        self.max_nonfinite = max_nonfinite
        self.logger = logger or logging.getLogger(__name__)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.meter = _PeriodMeter(device)
        self.iter = start_iter
        self.step: StepResult | None = None
        self.lr = optimizer.param_groups[0]["lr"]
        self.stop, self.stop_signal, self.skipped_steps = False, 0, 0
        self.last_eval: dict[str, Any] | None = None
        self._data_iter = None
        self._read: tuple[int, PeriodStats] | None = None
        self._signal = 0

    def run_step(self) -> StepResult:
        """One iteration's optimiser step (no host sync); returns its ``StepResult``."""
        if self._data_iter is None:  # called directly (the benchmark), not by train()
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

    def read_stats(self) -> PeriodStats:
        """The statistics since the last read, brought to the host at most once per iteration
        (whoever asks first); the skipped steps are taken back off the host-held optimiser
        counters.

        Raises:
            NonFiniteError: ``max_nonfinite`` consecutive steps were skipped.
        """
        if self._read is not None and self._read[0] == self.iter:
            return self._read[1]
        stats = self.meter.read()
        bad = stats.counts["bad"]
        if bad:
            undo_host_steps(self.optimizer, bad)
            self.skipped_steps += bad
            log = self.logger.warning if comm.is_main_process() else self.logger.debug
            log(
                "iterations up to %d: %d non-finite step(s) skipped (%d in all)",
                self.iter, bad, self.skipped_steps,
            )  # fmt: skip
        if stats.counts["longest"] >= self.max_nonfinite:
            raise NonFiniteError(
                f"stopping at iteration {self.iter}: {stats.counts['longest']} consecutive "
                f"non-finite losses or gradients (SOLVER.MAX_NONFINITE = "
                f"{self.max_nonfinite}); the last good checkpoint is untouched"
            )
        self._read = (self.iter, stats)
        return stats

    def _note_signal(self, signum: int, frame: Any) -> None:
        self._signal = self._signal or signum

    def train(self) -> None:
        """Run the iterations; the hooks' ``after_train`` runs also when one raises."""
        group = comm.host_group()  # collective: every rank calls train()
        # The ranks agree on a stop signal one step late (started after a step, read after the
        # next), so no rank waits for the slowest after every step; alone, at once.
        alone = comm.get_world_size() == 1
        agreement = None
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            # Noted, not raised; forked DataLoader workers inherit the handlers, so a Ctrl-C
            # sent to the whole process group does not kill them mid-step either.
            handlers = {s: signal.signal(s, self._note_signal) for s in STOP_SIGNALS}
        # Creating a DataLoader iterator draws a base seed from torch's global generator;
        # undo that draw so that the noise depends only on the restored RNG state, and a
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
                if alone:
                    self.stop_signal = self._signal
                else:
                    previous = agreement
                    agreement = comm.max_over_ranks_async(self._signal, group)
                    self.stop_signal = previous() if previous else 0
                for hook in self.hooks:
                    start = time.perf_counter()
                    hook.after_step(self)
                    if not hook.training_time:  # images/s measures training alone
                        self.meter.start += time.perf_counter() - start
                if self.stop or self.stop_signal:
                    break
            if agreement is not None:
                agreement()  # the last one started, so no collective is left pending
            if self.step is not None:
                self.read_stats()  # the skipped steps of a loop that stopped early
        finally:
            for hook in self.hooks:
                hook.after_train(self)
            for s, handler in handlers.items():
                signal.signal(s, handler)


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
    """Train from iteration ``start_iter`` to SOLVER.MAX_ITER with a training run's hooks.
    Collective under torchrun: every rank calls it; rank 0 alone writes.

    Args:
        cfg: the run's config (SOLVER, TEST, LOG sections).
        data_loader: endless iterator of ``(images (b, 3, H, W), masks or None)`` (or with
            factors), b the per-process micro-batch.
        checkpointer: saves every SOLVER.CHECKPOINT_PERIOD iterations, at the end and on a
            stop signal.
        start_iter: completed iterations (0 on a fresh start, the checkpoint's on resume).
        heldout: this rank's share of the fixed held-out batch (``make_heldout_batches``),
            evaluated every TEST.EVAL_PERIOD iterations and at the end; None = never; its
            dataset name ``heldout_name`` tags the logs.
        writer: TensorBoard SummaryWriter on rank 0, None elsewhere.
        model, optimizer, scheduler, device, logger: as named.

    Returns:
        ``{"iteration", "skipped_steps", "last_eval"}``.

    Raises:
        NonFiniteError: SOLVER.MAX_NONFINITE consecutive steps were non-finite; no
            checkpoint is written after the last good one.
        Interrupted: SIGTERM or SIGINT; the checkpoint of the iteration reached is written.
    """
    logger = logger or logging.getLogger(__name__)
    clip = cfg.SOLVER.GRAD_CLIP_NORM if cfg.SOLVER.GRAD_CLIP_NORM > 0 else math.inf
    # Recorded in each checkpoint: evaluation divides the gradient inputs by it.
    extra = {"per_process_batch": per_process_batch(cfg, comm.get_world_size())}
    hooks: list[HookBase] = [
        ScalarLogs(cfg.LOG.PERIOD, writer, logger),
        ImageSummaries(writer, cfg.LOG.IMAGE_PERIOD, cfg.LOG.NUM_IMAGES),
        ProgressBar(cfg.LOG.PERIOD),
        PeriodicCheckpoint(checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD, cfg.dump(), extra),
    ]
    if heldout is not None:
        period = cfg.TEST.EVAL_PERIOD
        hooks.append(HeldoutEvaluation(cfg, heldout, heldout_name, period, device, writer, logger))
    trainer = Trainer(
        model, optimizer, data_loader, scheduler, device, start_iter, cfg.SOLVER.MAX_ITER,
        hooks, cfg.SOLVER.ACCUMULATE_STEPS, clip,
        autocast_factory(cfg.MODEL.PRECISION, device),
        max_nonfinite=cfg.SOLVER.MAX_NONFINITE, logger=logger,
    )  # fmt: skip
    logger.info("start training at iteration %d of %d", start_iter, cfg.SOLVER.MAX_ITER)
    trainer.train()
    if writer is not None:
        writer.flush()
    if trainer.stop_signal and trainer.iter < cfg.SOLVER.MAX_ITER:
        name = signal.Signals(trainer.stop_signal).name
        message = (
            f"{name}: stopped at iteration {trainer.iter} with checkpoint "
            f"model_{trainer.iter:07d}.pth in {cfg.OUTPUT_DIR}; the same command resumes"
        )
        logger.warning("%s", message)
        raise Interrupted(trainer.stop_signal, message)
    logger.info(
        "training done at iteration %d (%d steps skipped)", trainer.iter, trainer.skipped_steps
    )
    return {
        "iteration": trainer.iter,
        "skipped_steps": trainer.skipped_steps,
        "last_eval": trainer.last_eval,
    }
