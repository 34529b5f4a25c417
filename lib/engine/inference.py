"""``do_evaluate``: segmentation metrics of a model on one or more datasets.

One function serves both the periodic evaluation of ``tools/train_net.py`` (on a fixed
held-out batch) and ``tools/test_net.py`` (on whole test splits). In a distributed run every
rank evaluates its own shard (rank r holds images r, r + W, r + 2W, ... with no padding); the
per-image scores are summed and counted across ranks, so the metrics do not depend on the
number of processes, and saved predictions are gathered to rank 0 and written in dataset order.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from lib.data import collate, dataset_provenance
from lib.engine.checkpoint import unwrap_model
from lib.evaluation.segmentation import SCORE_KEYS, foreground_mse, segmentation_scores
from lib.model.factor_regressor import FactorMetrics
from lib.utils import comm

# A held-out batch: images (b, 3, H, W) and label maps (b, H, W) or None.
Batch = tuple[torch.Tensor, "torch.Tensor | None"]

NO_MASK_REASON = "dataset has no ground-truth masks: ARI and the other mask metrics not computed"
NON_FINITE_REASON = "the model's masks or reconstructions are not finite: metrics are null"
LEFT_OUT_REASON = (
    "images where the score is undefined, left out of its mean: no foreground pixel (miou "
    "also: a single pair of segments); see data/README.md"
)
# Metrics over the true masks, in metrics.json's order (lib/evaluation/segmentation.py); each
# is a mean over the images where it is defined.
MASK_METRICS = (*SCORE_KEYS, "fg_mse", "fg_pixel_mse")
# The keys metrics.json always has at the top level (values of the first test dataset).
METRIC_KEYS = (
    *("fg_ari", "ari", "mse", "num_images", "fg_ari_per_iter", "ari_per_iter", "mse_per_iter"),
    *MASK_METRICS[2:],
    *(f"{key}_per_iter" for key in MASK_METRICS[2:]),
)
# Optional top-level keys of metrics.json, copied from the first dataset when present.
EXTRA_KEYS = (
    *("fg_ari_num_images", "reason", "left_out", "left_out_reason", "non_finite_images"),
    *("provenance", "factors", "factor_loss"),
)
# Elements of the largest one-hot tensor (images x steps x pixels x slots) the metrics build at
# once; more steps are split into chunks (2**26 float32 = 256 MiB).
_MAX_ONE_HOT = 2**26


def sanitize_name(name: str) -> str:
    """A dataset name as a folder name: characters other than letters, digits, '.', '_', '-'
    become '_' (``folder:/data/x`` -> ``folder__data_x``)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".")
    return cleaned or "dataset"


def _upsample(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, n, K, h, w) soft masks resized to ``size`` as EfficientMORL's evaluation does (PIL's
    default bicubic on each float mask; torch's antialiased bicubic is the same filter)."""
    flat = F.interpolate(masks.flatten(0, 1).float(), size, mode="bicubic", antialias=True)
    return flat.reshape(*masks.shape[:3], *size)


class _Accumulator:
    """Sums of per-image scores over the T+1 steps, on the masks' device until ``metrics``.

    Rows of ``sums``: the MSE sum, the count of images with non-finite outputs, then a (sum,
    count of defined images) pair per ``MASK_METRICS`` key; columns: steps.
    """

    def __init__(self, steps: int, device: torch.device | str = "cpu") -> None:
        rows = 2 + 2 * len(MASK_METRICS)
        self.sums = torch.zeros(rows, steps, dtype=torch.float64, device=device)
        self.num_images = self.num_with_masks = 0

    @staticmethod
    def _row(key: str) -> int:
        return 2 + 2 * MASK_METRICS.index(key)

    def add(self, masks: torch.Tensor, recon: torch.Tensor, images: torch.Tensor, labels):
        """Add one batch.

        Args:
            masks: (B, T+1, K, h, w) softmax masks.
            recon: (B, T+1, 3, h, w) reconstructions.
            images: (B, 3, h, w) inputs.
            labels: (B, H, W) int64 true label maps (H, W > h, w: native resolution, the
                masks are upsampled to it), or None.
        """
        images = images.to(recon.device)
        self.sums = self.sums.to(recon.device)
        with torch.autocast(device_type=recon.device.type, enabled=False):
            mse = ((recon.float() - images.float()[:, None]) ** 2).mean(dim=(2, 3, 4))
        self.sums[0] += mse.double().sum(dim=0)  # (T+1,)
        finite = torch.isfinite(masks).flatten(2).all(2) & torch.isfinite(recon).flatten(2).all(2)
        self.sums[1] += (~finite).sum(dim=0)
        self.num_images += images.shape[0]
        if labels is None:
            return
        self.num_with_masks += images.shape[0]
        labels = labels.to(masks.device)
        batch, steps, num_slots = masks.shape[:3]
        native = labels.shape[-2:] != masks.shape[-2:]
        model_labels = labels
        if native:  # fg_mse at the model's resolution: labels sampled at its pixel centres
            small = F.interpolate(labels[:, None].double(), masks.shape[-2:], mode="nearest-exact")
            model_labels = small[:, 0].long()
        fg_mse, fg_pixel_mse = foreground_mse(images, recon, model_labels)
        scores = {"fg_mse": [fg_mse], "fg_pixel_mse": [fg_pixel_mse]}  # (B, T+1) each
        pixels = labels[0].numel()
        chunk = max(1, min(steps, _MAX_ONE_HOT // max(1, batch * pixels * num_slots)))
        for start in range(0, steps, chunk):
            part = masks[:, start : start + chunk]
            n = part.shape[1]
            if native:
                part = _upsample(part, labels.shape[-2:])
            # (B, n, H, W) -> (B * n, H, W): every step of every image is one "image".
            pred = part.argmax(dim=2).reshape(-1, *labels.shape[1:])
            true = labels[:, None].expand(batch, n, *labels.shape[1:]).reshape(pred.shape)
            for key, value in segmentation_scores(true, pred, True, num_slots).items():
                scores.setdefault(key, []).append(value.reshape(batch, n))
        for key in MASK_METRICS:
            value = torch.cat(scores[key], dim=1).to(self.sums.device, torch.float64)
            defined = ~torch.isnan(value)
            row = self._row(key)
            self.sums[row] += torch.where(defined, value, torch.zeros_like(value)).sum(dim=0)
            self.sums[row + 1] += defined.sum(dim=0)

    def reduce(self) -> None:
        """Sum the accumulators over every rank (collective: all ranks must call it)."""
        counts = torch.tensor(
            [self.num_images, self.num_with_masks], dtype=torch.float64, device="cpu"
        )
        self.sums = comm.all_reduce_sum(self.sums)
        self.num_images, self.num_with_masks = map(int, comm.all_reduce_sum(counts).tolist())

    def metrics(self, has_masks: bool) -> dict[str, Any]:
        """Means over images as the metrics.json entry of one dataset (one host read)."""
        sums = self.sums.cpu().tolist()
        bad = [c > 0 for c in sums[1]]  # steps where some output is not finite: all null

        def mean(row: int, counts: list[float]) -> list[float | None]:
            return [s / c if c > 0 and not b else None for s, c, b in zip(sums[row], counts, bad)]

        mse = mean(0, [self.num_images] * len(bad))
        out: dict[str, Any] = {"num_images": self.num_images, "mse": mse[-1], "mse_per_iter": mse}
        for key in MASK_METRICS:
            row = self._row(key)
            per_iter = mean(row, sums[row + 1]) if has_masks else [None] * len(bad)
            out[key], out[f"{key}_per_iter"] = per_iter[-1], per_iter
        if has_masks:
            counts = {k: int(sums[self._row(k) + 1][-1]) for k in MASK_METRICS}
            out["fg_ari_num_images"] = counts["fg_ari"]
            # Every key, 0 included: a reader sees that nothing was left out, not just nothing said.
            left_out = {k: self.num_with_masks - c for k, c in counts.items()}
            out.update(left_out=left_out, left_out_reason=LEFT_OUT_REASON)
        else:
            out["reason"] = NO_MASK_REASON
        if any(bad):
            out["non_finite_images"] = int(max(sums[1]))
            out["reason"] = NON_FINITE_REASON
        return out


class _FactorAccumulator:
    """Exact factor scores over a whole dataset and the regressor's loss (visible-object
    weighted mean over batches, i.e. the loss of the whole set)."""

    def __init__(self, mapping) -> None:
        self.metrics = FactorMetrics(mapping)
        self.loss_sum = self.num_visible = 0.0

    def add(self, out: dict) -> None:
        weight = out["factor_assignment"].sum(dim=2)  # (B, L): 1 for visible objects
        self.metrics.update(out["factor_targets"], out["factor_matched"], weight)
        visible = float(weight.sum())
        self.loss_sum += float(out["factor_loss"]) * visible
        self.num_visible += visible

    def result(self) -> dict[str, Any]:
        """Collective: every rank's sums are gathered, so all ranks return the same."""
        gathered = comm.all_gather_object((self.metrics.sums, self.loss_sum, self.num_visible))
        total = FactorMetrics(self.metrics.mapping)
        loss_sum = num_visible = 0.0
        for sums, loss, visible in gathered:
            total.merge(sums)
            loss_sum += loss
            num_visible += visible
        scores = total.compute()
        return {
            "factors": {k: (None if v != v else v) for k, v in scores.items()},  # NaN -> null
            "factor_loss": loss_sum / num_visible if num_visible else None,
            "factor_types": {m.name: m.type for m in total.mapping},
        }


class _DatasetRun:
    """One dataset's evaluation on this rank: ``add`` each batch, then ``metrics`` once;
    ``predictions`` keeps this rank's final argmax maps (H, W) uint8 with ``predictions_dir``."""

    def __init__(
        self,
        net: nn.Module,
        loader: Iterable,
        device: torch.device,
        num_slots: int | None,
        num_iters: int | None,
        predictions_dir: str | None,
    ) -> None:
        self.net, self.loader, self.device = net, loader, device
        self.num_slots, self.num_iters = num_slots or None, num_iters or None
        self.keep_predictions = predictions_dir is not None
        # Created on the first batch: the step count T+1 is the model output's.
        self.accumulator: _Accumulator | None = None
        # False once any batch lacks masks: the dataset then has no mask metrics at all.
        self.has_masks = True
        self.predictions: list[np.ndarray] = []
        # The factor regressor is scored where the batches carry factors
        # (``make_data_loader(with_factors=True)``) with its mapping.
        regressor = getattr(net, "factor_regressor", None)
        dataset = getattr(loader, "dataset", None)
        mapping = getattr(dataset, "factor_mapping", None)
        self.factor_acc: _FactorAccumulator | None = None
        if regressor is not None and mapping is not None and getattr(dataset, "return_factors", 0):
            if [tuple(m) for m in regressor.mapping] == [tuple(m) for m in mapping]:
                self.factor_acc = _FactorAccumulator(regressor.mapping)

    def add(self, batch: Sequence) -> None:
        """Run the model on one batch ``(images (B, 3, H, W), masks (B, H', W') int64 or None
        [, factors {name: (B, L, ...)}])`` and add its scores."""
        images, masks = batch[0], batch[1]
        images = images.to(self.device, non_blocking=True)
        if masks is None:
            self.has_masks = False
        extra = {}
        if self.factor_acc is not None and len(batch) > 2 and masks is not None:
            factors = {k: v.to(self.device) for k, v in batch[2].items()}
            extra = {"labels": masks.to(self.device), "factors": factors}
        # The model needs autograd inside its forward; no_grad (not inference_mode) only
        # stops it from keeping the chain between steps.
        with torch.no_grad():
            out = self.net(images, num_slots=self.num_slots, num_iters=self.num_iters, **extra)
        if "factor_loss" in out:
            self.factor_acc.add(out)
        if self.accumulator is None:
            self.accumulator = _Accumulator(out["masks"].shape[1], out["masks"].device)
        self.accumulator.add(out["masks"], out["recon"], images, masks if self.has_masks else None)
        if self.keep_predictions:
            if out["masks"].shape[2] > 256:
                raise ValueError(
                    f"cannot save {out['masks'].shape[2]} slots in 8-bit prediction PNGs"
                )
            pred = out["masks"][:, -1].argmax(dim=1).to(torch.uint8).cpu().numpy()
            self.predictions.extend(list(pred))

    def metrics(self) -> dict[str, Any]:
        """The dataset's entry of ``do_evaluate``'s result, over every rank (collective)."""
        accumulator = self.accumulator
        # Every rank needs the step count to reduce, even one with an empty shard.
        local = [accumulator.sums.shape[1] if accumulator else 0, int(not self.has_masks)]
        steps, no_masks = comm.all_reduce_max(torch.tensor(local, device="cpu")).tolist()
        accumulator = accumulator or _Accumulator(steps)
        accumulator.reduce()
        metrics = accumulator.metrics(not no_masks)
        dataset = getattr(self.loader, "dataset", None)
        if dataset is not None:
            # One dict for a single dataset (the usual case), a list for a concatenation.
            provenance = dataset_provenance(dataset)
            metrics["provenance"] = provenance[0] if len(provenance) == 1 else provenance
        if self.factor_acc is not None:
            metrics.update(self.factor_acc.result())
        return metrics


def _save_predictions(
    local: list[np.ndarray], predictions_dir: str, name: str, logger: logging.Logger
) -> None:
    """Gather every rank's prediction maps and write them on rank 0 as
    ``predictions_dir/<sanitised name>/000000.png``, ... (collective); the folder is cleared
    first, so no file of an earlier, larger run survives."""
    gathered = comm.all_gather_object(local)  # rank r holds dataset indices r::W
    total = sum(len(part) for part in gathered)
    ordered = [gathered[i % len(gathered)][i // len(gathered)] for i in range(total)]
    if comm.is_main_process():
        folder = os.path.join(predictions_dir, sanitize_name(name))
        if os.path.isdir(folder):
            shutil.rmtree(folder)
        os.makedirs(folder)
        for index, pred in enumerate(ordered):
            Image.fromarray(pred, mode="L").save(os.path.join(folder, f"{index:06d}.png"))
        logger.info("wrote %d predictions to %s", len(ordered), folder)
    comm.synchronize()


def do_evaluate(
    model: nn.Module,
    data_loaders: Sequence[tuple[str, Iterable]],
    device: torch.device,
    num_slots: int | None = None,
    num_iters: int | None = None,
    predictions_dir: str | None = None,
    logger: logging.Logger | None = None,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Evaluate a model on datasets: ARI, MSE and the other segmentation metrics, every step.

    The model runs in eval mode (its seeded sampling noise makes the result deterministic and
    independent of the batch composition) and is put back in its previous mode afterwards.
    Collective in a distributed run: every rank must call it with its own shard.

    Args:
        model: the IODINE model (DDP wrappers are looked through; evaluation is per rank).
        data_loaders: ``(name, loader)`` pairs; each loader yields ``(images (B, 3, H, W) in
            [0, 1], masks (B, H, W) int64 label maps or None)``; rank r's holds dataset
            indices r::W in order, without padding.
        device: where the model runs.
        num_slots, num_iters: K and T for the forward pass (None or 0 = as trained).
        predictions_dir: when set, write each image's final argmax slot as an 8-bit PNG
            ``predictions_dir/<sanitised name>/000000.png``, ... (``_save_predictions``).
        logger: progress messages.
        progress: show a tqdm bar (rank 0).

    Returns:
        ``{name: metrics}``, identical on every rank: ``num_images`` (distinct images), ``mse``
        and every ``MASK_METRICS`` key at the final step, each with a ``<key>_per_iter`` list
        over the T+1 steps (data/README.md defines them; None without masks, with ``reason``,
        or where an output is not finite, with ``non_finite_images``), ``fg_ari_num_images``,
        ``left_out`` and ``left_out_reason``, ``provenance`` when the loader has a
        ``dataset``, and ``factors``, ``factor_loss``, ``factor_types`` when a factor
        regressor is scored.
    """
    logger = logger or logging.getLogger(__name__)
    net = unwrap_model(model)
    was_training = net.training
    net.eval()
    results: dict[str, dict[str, Any]] = {}
    try:
        for name, loader in data_loaders:
            run = _DatasetRun(net, loader, device, num_slots, num_iters, predictions_dir)
            batches = loader
            if progress and comm.is_main_process():
                from tqdm import tqdm

                batches = tqdm(loader, desc=f"eval {name}", leave=False, dynamic_ncols=True)
            for batch in batches:
                run.add(batch)
            results[name] = run.metrics()
            if predictions_dir is not None:
                _save_predictions(run.predictions, predictions_dir, name, logger)
    finally:
        net.train(was_training)
    return results


def format_metrics(results: dict[str, dict[str, Any]]) -> str:
    """Human-readable lines of ``do_evaluate`` results (segmentation scores in percent)."""

    def pct(value):
        return "n/a" if value is None else f"{100 * value:.2f}"

    def num(value):
        return "n/a" if value is None else f"{value:.5f}"

    lines = []
    for name, m in results.items():
        line = (
            f"{name}: fg_ari {pct(m['fg_ari'])}  ari {pct(m['ari'])}  mse {num(m['mse'])}  "
            f"({m['num_images']} images)"
        )
        if m.get("reason"):
            lines.append(line + f"  [{m['reason']}]")
        else:
            lines.append(line + "  fg_ari per step: " + " ".join(map(pct, m["fg_ari_per_iter"])))
            scores = ("sc", "msc", "mbo", "miou", "fg_miou", "count_acc")
            lines.append(
                "  " + "  ".join(f"{k} {pct(m[k])}" for k in scores)
                + f"  fg_mse {num(m['fg_mse'])}  fg_pixel_mse {num(m['fg_pixel_mse'])}"
            )  # fmt: skip
        if m.get("factors"):
            kinds = m.get("factor_types", {})
            parts = [
                f"{k} {'n/a' if v is None else f'{v:.3f}'}"
                + (" acc" if kinds.get(k) == "categorical" else " R2")
                for k, v in m["factors"].items()
            ]
            loss = "n/a" if m.get("factor_loss") is None else f"{m['factor_loss']:.4g}"
            lines.append(f"  factors: {'  '.join(parts)}  (regressor loss {loss})")
    return "\n".join(lines)


def metrics_document(
    results: dict[str, dict[str, Any]],
    checkpoint: str,
    iteration: int | None,
    num_slots: int,
    num_iters: int,
) -> dict[str, Any]:
    """The content of metrics.json.

    Args:
        results: ``do_evaluate``'s output (at least one dataset).
        checkpoint: path of the evaluated weights.
        iteration: their training iteration, or None.
        num_slots, num_iters: K and T of the evaluation.

    Returns:
        The first dataset's ``METRIC_KEYS`` (and ``EXTRA_KEYS`` when present) at the top level, every
        dataset's metrics under ``datasets``, and ``dataset``, ``checkpoint``, ``iteration``,
        ``num_slots``, ``num_iters``. NaN and infinite values become null, and their paths are
        listed under ``non_finite``.
    """
    first_name = next(iter(results))
    first = results[first_name]
    doc = {key: first[key] for key in METRIC_KEYS}
    doc.update({key: first[key] for key in EXTRA_KEYS if key in first})
    doc.update(
        dataset=first_name,
        datasets=results,
        checkpoint=checkpoint,
        iteration=iteration,
        num_slots=num_slots,
        num_iters=num_iters,
    )
    non_finite: list[str] = []
    doc = _finite_or_null(doc, "", non_finite)
    if non_finite:  # e.g. a diverged model: JSON has no NaN, so say which values were not numbers
        doc["non_finite"] = non_finite
    return doc


def _finite_or_null(value: Any, path: str, found: list[str]) -> Any:
    """``value`` with every NaN / infinite float replaced by None; their paths go to ``found``."""
    if isinstance(value, dict):
        return {
            k: _finite_or_null(v, f"{path}.{k}" if path else str(k), found)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v, f"{path}[{i}]", found) for i, v in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        found.append(path)
        return None
    return value


def make_heldout_batches(
    dataset: Any, num_images: int, batch_size: int, rank: int = 0, world_size: int = 1
) -> list[Batch]:
    """The fixed held-out batch evaluated during training: this rank's share, in memory.

    Args:
        dataset: the first test dataset; items ``(image (3, H, W), mask (H', W') or None)``.
        num_images: how many leading images to use (TEST.EVAL_NUM_IMAGES; capped at its size).
        batch_size: images per forward pass on this rank.
        rank, world_size: this process's shard is indices rank::world_size (no padding).

    Returns:
        List of ``(images (b, 3, H, W), masks (b, H', W') or None)``; empty if the shard is.
    """
    indices = list(range(rank, min(num_images, len(dataset)), world_size))
    return [
        collate([dataset[i][:2] for i in indices[start : start + batch_size]])
        for start in range(0, len(indices), batch_size)
    ]
