"""The trainer's hooks: everything a training run does besides the step itself.

A hook has ``before_train``, ``before_step``, ``after_step`` and ``after_train``, each given
the ``Trainer``; the trainer calls them in list order. ``do_train`` uses, in this order:
``PeriodicStats`` (device statistics to the host, non-finite bookkeeping, scalar logs),
``ImageSummaries``, ``HeldoutEvaluation``, ``PeriodicCheckpoint`` and ``ProgressBar``.
Hooks whose ``training_time`` is False (summaries, evaluation, saving) are left out of the
images/s figure.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm import tqdm
from yacs.config import CfgNode

from lib.engine.checkpoint import Checkpointer, get_rng_states, unwrap_model
from lib.engine.inference import do_evaluate, sanitize_name
from lib.engine.solver import undo_host_steps
from lib.engine.summaries import add_image_summaries
from lib.errors import IodineError
from lib.utils import comm

if TYPE_CHECKING:
    from lib.engine.trainer import Trainer


class NonFiniteError(IodineError, RuntimeError):
    """Training produced SOLVER.MAX_NONFINITE consecutive non-finite losses or gradients."""


class HookBase:
    """A hook: override what you need. ``training_time`` False: its time is not training."""

    training_time = True

    def before_train(self, trainer: Trainer) -> None:
        """Called once before the first iteration."""

    def before_step(self, trainer: Trainer) -> None:
        """Called before each ``run_step`` (``trainer.iter`` is the iteration about to run)."""

    def after_step(self, trainer: Trainer) -> None:
        """Called after each ``run_step`` (``trainer.iter`` is the iteration just done)."""

    def after_train(self, trainer: Trainer) -> None:
        """Called once after the last iteration, also when training stops early."""


def due(iteration: int, period: int, max_iter: int) -> bool:
    """Whether a periodic action runs at ``iteration`` (every ``period`` and at the end)."""
    return period > 0 and (iteration % period == 0 or iteration == max_iter)


class PeriodicStats(HookBase):
    """Brings the device statistics to the host once per ``log_period`` and before every
    checkpoint (one host sync), undoes the skipped steps' host-held optimiser counters, stops
    after ``max_nonfinite`` consecutive bad steps, and logs the period's mean scalars.

    Args:
        log_period: LOG.PERIOD (iterations).
        checkpoint_period: SOLVER.CHECKPOINT_PERIOD: the statistics are read before each
            checkpoint, so that none is written after the limit of bad steps.
        max_nonfinite: SOLVER.MAX_NONFINITE (at least 1).
        writer: TensorBoard writer on rank 0, else None.
        logger: where to log.
    """

    def __init__(
        self,
        log_period: int,
        checkpoint_period: int,
        max_nonfinite: int,
        writer: Any = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.log_period, self.checkpoint_period = log_period, checkpoint_period
        self.max_nonfinite = max(max_nonfinite, 1)
        self.writer = writer
        self.logger = logger or logging.getLogger(__name__)
        self.skipped_steps = 0
        self.read_at = -1

    def after_step(self, trainer: Trainer) -> None:
        iteration, max_iter = trainer.iter, trainer.max_iter
        checkpoint_due = due(iteration, self.checkpoint_period, max_iter)
        log_due = due(iteration, self.log_period, max_iter)
        if log_due or checkpoint_due:
            self._read(trainer, log_due)

    def after_train(self, trainer: Trainer) -> None:
        # A loop stopped early (TimeLimit) still accounts for its last steps' bad ones.
        if trainer.step is not None and self.read_at not in (trainer.iter, -2):
            self._read(trainer, log_due=False)

    def _read(self, trainer: Trainer, log_due: bool) -> None:
        iteration, max_iter = trainer.iter, trainer.max_iter
        self.read_at = iteration
        mean, counts, images_per_s = trainer.meter.read()
        if counts["bad"]:
            undo_host_steps(trainer.optimizer, counts["bad"])
            self.skipped_steps += counts["bad"]
            log = self.logger.warning if comm.is_main_process() else self.logger.debug
            log(
                "iterations up to %d: %d non-finite step(s) skipped (%d in all)",
                iteration,
                counts["bad"],
                self.skipped_steps,
            )
        trainer.skipped_steps = self.skipped_steps
        if counts["longest"] >= self.max_nonfinite:
            self.read_at = -2  # stopping: no further read
            raise NonFiniteError(
                f"stopping at iteration {iteration}: {counts['longest']} consecutive "
                f"non-finite losses or gradients (SOLVER.MAX_NONFINITE = "
                f"{self.max_nonfinite}); the last good checkpoint is untouched"
            )
        trainer.last_mean = mean
        if not log_due:
            return
        if mean is not None:
            log_scalars(
                self.writer, self.logger, iteration, max_iter, mean, trainer.lr, images_per_s
            )
        out = trainer.step.out
        if self.writer is not None and "factor_loss" in out:
            # The last micro-batch of this rank (not a period mean): factor/loss and
            # factor/<name> (R^2 or accuracy over its visible objects).
            self.writer.add_scalar("factor/loss", out["factor_loss"].item(), iteration)
            for name, value in out["factor_scores"].items():
                self.writer.add_scalar(f"factor/{name}", float(value), iteration)
        if self.writer is not None:
            self.writer.add_scalar("train/skipped_steps", self.skipped_steps, iteration)


def log_scalars(
    writer: Any,
    logger: logging.Logger,
    iteration: int,
    max_iter: int,
    mean: dict[str, Any],
    lr: float,
    images_per_s: float,
) -> None:
    """Log one period's mean statistics (``loss``, per-step ``nll`` and ``kl``, ``grad_norm``:
    ``StepResult.stats`` by name) and write them to TensorBoard."""
    nll, kl = mean["nll"], mean["kl"]
    logger.info(
        "iter %d/%d  loss %.2f  nll_T %.2f  kl_T %.2f  grad_norm %.3g  lr %.3g  %.1f images/s",
        iteration,
        max_iter,
        mean["loss"],
        nll[-1],
        kl[-1],
        mean["grad_norm"],
        lr,
        images_per_s,
    )
    if writer is None:
        return
    writer.add_scalar("loss/total", mean["loss"], iteration)
    for t in range(len(nll)):
        writer.add_scalar(f"loss/nll_t{t}", nll[t], iteration)
        writer.add_scalar(f"loss/kl_t{t}", kl[t], iteration)
    writer.add_scalar("train/lr", lr, iteration)
    writer.add_scalar("train/grad_norm", mean["grad_norm"], iteration)
    writer.add_scalar("train/images_per_s", images_per_s, iteration)


class ImageSummaries(HookBase):
    """Pictures of the current training batch (rank 0's last micro-batch) every ``period``."""

    training_time = False

    def __init__(self, writer: Any, period: int, num_images: int) -> None:
        self.writer, self.period, self.num_images = writer, period, num_images

    def after_step(self, trainer: Trainer) -> None:
        if self.writer is not None and due(trainer.iter, self.period, trainer.max_iter):
            step = trainer.step
            add_image_summaries(
                self.writer, "train_images", step.images, step.out, trainer.iter, self.num_images
            )


class HeldoutEvaluation(HookBase):
    """The fixed held-out batch evaluated every ``period`` iterations and at the end
    (collective: every rank evaluates its share); metrics logged and written under
    ``eval/<dataset>/<key>``, pictures of the first images under ``eval_images/<dataset>``.

    Args:
        cfg: the config (TEST.NUM_SLOTS, TEST.NUM_ITERS, LOG.NUM_IMAGES).
        batches: this rank's share (``make_heldout_batches``).
        name: the dataset's name.
        period: TEST.EVAL_PERIOD.
        device: where the model runs.
        writer: TensorBoard writer on rank 0, else None.
        logger: where to log.
    """

    training_time = False

    def __init__(
        self,
        cfg: CfgNode,
        batches: Sequence,
        name: str,
        period: int,
        device: torch.device,
        writer: Any = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.cfg, self.batches, self.name, self.period = cfg, batches, name, period
        self.device, self.writer = device, writer
        self.logger = logger or logging.getLogger(__name__)
        self.last: dict[str, Any] | None = None

    def after_step(self, trainer: Trainer) -> None:
        if due(trainer.iter, self.period, trainer.max_iter):
            self.last = evaluate_heldout(
                self.cfg, trainer.model, self.batches, self.name, self.device, trainer.iter,
                self.writer, self.logger,
            )  # fmt: skip
            trainer.model.train()
            trainer.last_eval = self.last


def evaluate_heldout(
    cfg: CfgNode,
    model: nn.Module,
    heldout: Sequence,
    name: str,
    device: torch.device,
    iteration: int,
    writer: Any,
    logger: logging.Logger,
) -> dict[str, Any]:
    """``do_evaluate`` on the held-out batches, logged and written; returns the metrics."""
    num_slots = cfg.TEST.NUM_SLOTS or None
    num_iters = cfg.TEST.NUM_ITERS or None
    metrics = do_evaluate(model, [(name, heldout)], device, num_slots, num_iters)[name]

    def pct(value):
        return "n/a" if value is None else f"{100 * value:.2f}"

    logger.info(
        "iter %d eval on %d images of %s: fg_ari %s  ari %s  mse %.5f",
        iteration,
        metrics["num_images"],
        name,
        pct(metrics["fg_ari"]),
        pct(metrics["ari"]),
        metrics["mse"] if metrics["mse"] is not None else float("nan"),
    )
    if writer is None:
        return metrics
    # Tags carry the dataset's name: eval/clevr6_synth_test/fg_ari is not a paper number.
    tag = f"eval/{sanitize_name(name)}"
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "num_images":
            writer.add_scalar(f"{tag}/{key}", value, iteration)
        elif key.endswith("_per_iter") and isinstance(value, list):
            # One curve per refinement step and metric: <key>_t0 .. <key>_tT.
            for t, per_step in enumerate(value):
                if isinstance(per_step, (int, float)):
                    writer.add_scalar(f"{tag}/{key[: -len('_per_iter')]}_t{t}", per_step, iteration)
    if heldout:
        # Pictures of the first held-out images, in eval mode (seeded noise).
        images = heldout[0][0][: cfg.LOG.NUM_IMAGES].to(device)
        net = unwrap_model(model)
        net.eval()
        with torch.no_grad():
            out = net(images, num_slots=num_slots, num_iters=num_iters)
        add_image_summaries(
            writer, f"eval_images/{sanitize_name(name)}", images, out, iteration,
            cfg.LOG.NUM_IMAGES,
        )  # fmt: skip
    return metrics


class PeriodicCheckpoint(HookBase):
    """A checkpoint every ``period`` iterations and at the end; every rank's RNG state is
    gathered (collective), rank 0 writes. ``extra`` goes into each file (the per-process
    batch that evaluation divides by)."""

    training_time = False

    def __init__(
        self, checkpointer: Checkpointer, period: int, cfg_yaml: str, extra: dict | None = None
    ) -> None:
        self.checkpointer, self.period = checkpointer, period
        self.cfg_yaml, self.extra = cfg_yaml, extra or {}

    def after_step(self, trainer: Trainer) -> None:
        if due(trainer.iter, self.period, trainer.max_iter):
            rng_states = comm.all_gather_object(get_rng_states())
            self.checkpointer.save(trainer.iter, self.cfg_yaml, rng_states, self.extra)


class ProgressBar(HookBase):
    """A tqdm bar on rank 0 with the last period's loss."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def before_train(self, trainer: Trainer) -> None:
        self.bar = tqdm(
            total=trainer.max_iter,
            initial=trainer.start_iter,
            desc="train",
            dynamic_ncols=True,
            disable=not comm.is_main_process(),
        )

    def after_step(self, trainer: Trainer) -> None:
        self.bar.update(1)
        if trainer.last_mean is not None:
            self.bar.set_postfix(loss=f"{trainer.last_mean['loss']:.1f}", refresh=False)

    def after_train(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()
