"""The trainer's hooks: what a training run does after its steps, one job each.

``ScalarLogs``, ``ImageSummaries``, ``HeldoutEvaluation``, ``PeriodicCheckpoint`` and
``ProgressBar`` share nothing but the trainer, whose ``read_stats`` brings the period's
statistics to the host once per iteration whoever asks first: their order does not matter.
Hooks whose ``training_time`` is False are left out of the images/s figure.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import nn
from tqdm import tqdm
from yacs.config import CfgNode

from lib.engine.checkpoint import Checkpointer, get_rng_states, unwrap_model
from lib.engine.inference import do_evaluate, sanitize_name
from lib.engine.summaries import add_image_summaries
from lib.utils import comm


class TrainerView(Protocol):
    """What hooks see of ``lib.engine.trainer.Trainer`` (see its attributes)."""

    model: nn.Module
    iter: int
    start_iter: int
    max_iter: int
    lr: float
    step: Any
    stop_signal: int
    skipped_steps: int
    last_eval: dict[str, Any] | None

    def read_stats(self) -> Any: ...


class HookBase:
    """A hook: override what you need. ``training_time`` False: its time is not training."""

    training_time = True

    def before_train(self, trainer: TrainerView) -> None:
        """Called once before the first iteration."""

    def before_step(self, trainer: TrainerView) -> None:
        """Called before each ``run_step`` (``trainer.iter`` is the iteration about to run)."""

    def after_step(self, trainer: TrainerView) -> None:
        """Called after each ``run_step`` (``trainer.iter`` is the iteration just done)."""

    def after_train(self, trainer: TrainerView) -> None:
        """Called once after the last iteration, also when training stops early."""


def due(iteration: int, period: int, max_iter: int) -> bool:
    """Whether a periodic action runs at ``iteration`` (every ``period`` and at the end)."""
    return period > 0 and (iteration % period == 0 or iteration == max_iter)


class ScalarLogs(HookBase):
    """Every ``period`` iterations, the period's mean statistics (``StepResult.stats`` by name)
    to the log and TensorBoard, with the factor regressor's scalars and the skipped steps."""

    def __init__(self, period: int, writer: Any = None, logger: logging.Logger | None = None):
        self.period, self.writer = period, writer
        self.logger = logger or logging.getLogger(__name__)

    def after_step(self, trainer: TrainerView) -> None:
        it, writer = trainer.iter, self.writer
        if not due(it, self.period, trainer.max_iter):
            return
        mean, _, images_per_s = trainer.read_stats()
        if mean is not None:
            self.logger.info(
                "iter %d/%d  loss %.2f  nll_T %.2f  kl_T %.2f  grad_norm %.3g  lr %.3g  "
                "%.1f images/s", it, trainer.max_iter, mean["loss"], mean["nll"][-1],
                mean["kl"][-1], mean["grad_norm"], trainer.lr, images_per_s,
            )  # fmt: skip
        if writer is None:
            return
        if mean is not None:
            writer.add_scalar("loss/total", mean["loss"], it)
            for t, (nll, kl) in enumerate(zip(mean["nll"], mean["kl"])):
                writer.add_scalar(f"loss/nll_t{t}", nll, it)
                writer.add_scalar(f"loss/kl_t{t}", kl, it)
            writer.add_scalar("train/lr", trainer.lr, it)
            writer.add_scalar("train/grad_norm", mean["grad_norm"], it)
            writer.add_scalar("train/images_per_s", images_per_s, it)
        out = trainer.step.out
        if "factor_loss" in out:
            # This rank's last micro-batch (not a period mean): factor/loss and
            # factor/<name> (R^2 or accuracy over its visible objects).
            writer.add_scalar("factor/loss", out["factor_loss"].item(), it)
            for name, value in out["factor_scores"].items():
                writer.add_scalar(f"factor/{name}", float(value), it)
        writer.add_scalar("train/skipped_steps", trainer.skipped_steps, it)


class ImageSummaries(HookBase):
    """Pictures of the current training batch (rank 0's last micro-batch) every ``period``."""

    training_time = False

    def __init__(self, writer: Any, period: int, num_images: int) -> None:
        self.writer, self.period, self.num_images = writer, period, num_images

    def after_step(self, trainer: TrainerView) -> None:
        if self.writer is not None and due(trainer.iter, self.period, trainer.max_iter):
            step = trainer.step
            add_image_summaries(
                self.writer, "train_images", step.images, step.out, trainer.iter, self.num_images
            )


class HeldoutEvaluation(HookBase):
    """The fixed held-out batch evaluated every ``period`` iterations and at the end
    (collective: every rank evaluates its share, ``make_heldout_batches``); metrics logged and
    written under ``eval/<name>/<key>``, pictures of the first images under
    ``eval_images/<name>``. ``cfg``: TEST.NUM_SLOTS, TEST.NUM_ITERS, LOG.NUM_IMAGES."""

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

    def after_step(self, trainer: TrainerView) -> None:
        if due(trainer.iter, self.period, trainer.max_iter):
            trainer.last_eval = self.evaluate(trainer.model, trainer.iter)
            trainer.model.train()

    def evaluate(self, model: nn.Module, iteration: int) -> dict[str, Any]:
        """``do_evaluate`` on the held-out batches, logged and written; returns the metrics."""
        cfg, name, heldout, device = self.cfg, self.name, self.batches, self.device
        writer, logger = self.writer, self.logger
        num_slots = cfg.TEST.NUM_SLOTS or None
        num_iters = cfg.TEST.NUM_ITERS or None
        metrics = do_evaluate(model, [(name, heldout)], device, num_slots, num_iters)[name]

        def pct(value):
            return "n/a" if value is None else f"{100 * value:.2f}"

        mse = metrics["mse"] if metrics["mse"] is not None else float("nan")
        logger.info(
            "iter %d eval on %d images of %s: fg_ari %s  ari %s  mse %.5f", iteration,
            metrics["num_images"], name, pct(metrics["fg_ari"]), pct(metrics["ari"]), mse,
        )  # fmt: skip
        if writer is None:
            return metrics
        # Tags carry the dataset's name: eval/clevr6_synth_test/fg_ari is not a paper number.
        tag = f"eval/{sanitize_name(name)}"
        for key, value in metrics.items():
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if number and key != "num_images":
                writer.add_scalar(f"{tag}/{key}", value, iteration)
            elif key.endswith("_per_iter") and isinstance(value, list):
                # One curve per refinement step and metric: <key>_t0 .. <key>_tT.
                for t, per_step in enumerate(value):
                    if isinstance(per_step, int | float):
                        writer.add_scalar(
                            f"{tag}/{key.removesuffix('_per_iter')}_t{t}", per_step, iteration
                        )
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
    """A checkpoint every ``period`` iterations, at the end and at a stop signal, after the
    statistics are read (no checkpoint past SOLVER.MAX_NONFINITE). Every rank's RNG state is
    gathered (collective), rank 0 writes; ``extra`` goes into each file."""

    training_time = False

    def __init__(
        self, checkpointer: Checkpointer, period: int, cfg_yaml: str, extra: dict | None = None
    ) -> None:
        self.checkpointer, self.period = checkpointer, period
        self.cfg_yaml, self.extra = cfg_yaml, extra or {}

    def after_step(self, trainer: TrainerView) -> None:
        if trainer.stop_signal or due(trainer.iter, self.period, trainer.max_iter):
            trainer.read_stats()
            rng_states = comm.all_gather_object(get_rng_states())
            self.checkpointer.save(trainer.iter, self.cfg_yaml, rng_states, self.extra)


class ProgressBar(HookBase):
    """A tqdm bar on rank 0 with the loss of the period ending every ``period`` iterations."""

    def __init__(self, period: int) -> None:
        self.period = period
        self.bar: tqdm | None = None

    def before_train(self, trainer: TrainerView) -> None:
        self.bar = tqdm(
            total=trainer.max_iter,
            initial=trainer.start_iter,
            desc="train",
            dynamic_ncols=True,
            disable=not comm.is_main_process(),
        )

    def after_step(self, trainer: TrainerView) -> None:
        self.bar.update(1)
        if due(trainer.iter, self.period, trainer.max_iter):
            mean = trainer.read_stats().mean
            if mean is not None:
                self.bar.set_postfix(loss=f"{mean['loss']:.1f}", refresh=False)

    def after_train(self, trainer: TrainerView) -> None:
        if self.bar is not None:
            self.bar.close()
