"""Every segmentation metric of ``metrics.json`` from one contingency table per batch.

``contingency_table`` (``lib/evaluation/ari.py``) gives ``inter[b, g, k]``, the pixels of
image b with true label g won by slot k (argmax); areas, unions and IoUs follow from it. A
predicted segment keeps its background pixels: ``ignore_background`` leaves out only the true
background segment (as GENESIS, the object-centric library, OCLF and ClevrTex do). Per-image
scores are float64 (B,); NaN marks an image where a score is undefined (no foreground pixel),
which the means leave out. data/README.md's table says which published number each key equals.

Sources (read, not copied): GENESIS ``average_segcover`` and the object-centric library's
``segmentation_covering`` (sc, msc), OCLF ``ocl/metrics/masks.py`` (mbo, fg_miou), ClevrTex
``CLEVRTEX_Evaluator.update`` (miou = its ``mIoU_fg``, count_acc = its ``acc``), the
object-centric library's ``MetricsEvaluator`` (fg_mse).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from lib.evaluation.ari import ari_from_table, contingency_table

# The keys of ``segmentation_scores``, in metrics.json's order.
SCORE_KEYS = ("fg_ari", "ari", "sc", "msc", "mbo", "miou", "fg_miou", "count_acc")


def _nan_where_empty(total: Tensor, norm: Tensor) -> Tensor:
    out = total / norm.clamp(min=1e-300)
    return torch.where(norm > 0, out, torch.full_like(out, float("nan")))


def _iou(inter: Tensor, dtype=torch.float64) -> Tensor:
    """(B, G, K) IoU; 0 where the union is empty (as OCLF's iou_empty and ClevrTex)."""
    union = inter.sum(2, keepdim=True) + inter.sum(1, keepdim=True) - inter
    iou = inter.to(dtype) / union.to(dtype).clamp(min=1.0)
    return torch.where(union > 0, iou, torch.zeros_like(iou))


def _covering(inter: Tensor, ignore_background: bool, weighted: bool) -> Tensor:
    """SC (``weighted``: by true area) or mSC: best IoU of each scored true segment."""
    true_area = inter.sum(2)
    scored = (true_area > 0).double()
    if ignore_background:
        scored[:, 0] = 0
    weight = scored * true_area if weighted else scored
    best = _iou(inter).max(dim=2).values
    return _nan_where_empty((weight * best).sum(1), weight.sum(1))


def _clevrtex_miou(inter: Tensor, ignore_background: bool) -> Tensor:
    """ClevrTex's mIoU_fg (or mIoU without ``ignore_background``), per image.

    As ``CLEVRTEX_Evaluator``: the true segments (label g = row g) and the slots are padded
    with empty ones to one count n = max(G, K), their float32 IoU matrix is matched by
    ``scipy.optimize.linear_sum_assignment(maximize=True)`` (true x predicted, so ties fall as
    ClevrTex's fall), and the matched IoUs of labels >= 1 are summed and divided by the
    number of pairs with a non-empty side, minus 1 for the background pair (always, as
    ClevrTex). NaN where that divisor is 0 or the image has no foreground pixel.
    """
    batch, num_true, num_slots = inter.shape
    n = max(num_true, num_slots)
    iou = np.zeros((batch, n, n), dtype=np.float32)
    iou[:, :num_true, :num_slots] = _iou(inter, torch.float32).cpu().numpy()
    true_used = np.zeros((batch, n), dtype=bool)
    true_used[:, :num_true] = (inter.sum(2) > 0).cpu().numpy()
    pred_used = np.zeros((batch, n), dtype=bool)
    pred_used[:, :num_slots] = (inter.sum(1) > 0).cpu().numpy()
    start = 1 if ignore_background else 0
    out = np.full(batch, np.nan)
    for b in range(batch):  # scipy has no batched solver; (n, n) is tiny
        rows, cols = linear_sum_assignment(iou[b], maximize=True)
        pairs = (true_used[b, rows] | pred_used[b, cols]).sum() - start
        if pairs > 0 and true_used[b, start:].any():
            out[b] = iou[b, rows, cols].astype(np.float64)[start:].sum() / pairs
    return torch.from_numpy(out).to(inter.device)


def _hungarian_fg_miou(inter: Tensor) -> Tensor:
    """OCLF's ``UnsupervisedMaskIoUMetric`` (Hungarian, background target dropped), per image:
    the non-empty true objects matched one-to-one to all slots for the largest total IoU,
    unmatched objects 0, mean over the objects; NaN without one."""
    iou = _iou(inter)[:, 1:].cpu().numpy()
    present = (inter[:, 1:].sum(2) > 0).cpu().numpy()
    out = np.full(inter.shape[0], np.nan)
    for b in range(inter.shape[0]):
        if present[b].any():
            rows, cols = linear_sum_assignment(iou[b][present[b]], maximize=True)
            out[b] = iou[b][present[b]][rows, cols].sum() / present[b].sum()
    return torch.from_numpy(out).to(inter.device)


def segmentation_scores(
    true: Tensor, pred: Tensor, ignore_background: bool = True, num_slots: int | None = None
) -> dict[str, Tensor]:
    """Every label-map metric of ``metrics.json``, per image, from one contingency table.

    Args:
        true: (B, *S) integer true labels (0 = background, negative = not counted).
        pred: (B, *S) integer argmax slot per pixel, in [0, num_slots).
        ignore_background: leave the true background segment out of sc, msc, mbo and miou.
        num_slots: K, or None for ``pred.max() + 1``.

    Returns:
        ``{key: (B,) float64}`` for ``SCORE_KEYS``:
        ``fg_ari`` / ``ari``: ARI without / with the background pixels (``ari.py``);
        ``sc``: sum over true segments of area x best IoU over slots / their total area;
        ``msc`` and ``mbo`` (equal): mean over true segments of the best IoU over slots;
        ``miou``: ClevrTex's Hungarian mIoU (``_clevrtex_miou``);
        ``fg_miou``: OCLF's Hungarian mIoU of the true objects (``_hungarian_fg_miou``);
        ``count_acc``: 1 where as many slots win a pixel as there are distinct true labels
        (background included where present), else 0 (ClevrTex's ``acc``).
        NaN where undefined: no counted (foreground) pixel.
    """
    inter = contingency_table(true, pred, num_slots)
    msc = _covering(inter, ignore_background, weighted=False)
    counts_agree = (inter.sum(2) > 0).sum(1) == (inter.sum(1) > 0).sum(1)
    return {
        "fg_ari": ari_from_table(inter[:, 1:]),
        "ari": ari_from_table(inter),
        "sc": _covering(inter, ignore_background, weighted=True),
        "msc": msc,
        "mbo": msc.clone(),
        "miou": _clevrtex_miou(inter, ignore_background),
        "fg_miou": _hungarian_fg_miou(inter),
        "count_acc": counts_agree.double(),
    }


def foreground_mse(images: Tensor, recon: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Squared error over the foreground pixels (labels > 0), two normalisations.

    Args:
        images: (B, C, H, W) inputs.
        recon: (B, C, H, W) reconstructions, or (B, *T, C, H, W) for several steps at once.
        labels: (B, H, W) integer label maps.

    Returns:
        ``(fg_mse, fg_pixel_mse)``, each (B,) or (B, *T) float64: the foreground squared
        error divided by all C x H x W values (the object-centric library's FG-MSE, Dittadi
        et al.; 0 for an image without foreground), and divided by the C x (foreground
        pixels) values (NaN without foreground); ``fg_pixel_mse = fg_mse / foreground
        fraction``.
    """
    if recon.shape[0] != images.shape[0] or recon.shape[-3:] != images.shape[-3:]:
        raise ValueError(f"recon {tuple(recon.shape)} does not match images {tuple(images.shape)}")
    if labels.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(f"labels {tuple(labels.shape)} must be (B, H, W) of images")
    extra = recon.dim() - images.dim()
    target = images.reshape(images.shape[0], *([1] * extra), *images.shape[1:])
    foreground = (labels > 0).reshape(labels.shape[0], *([1] * (extra + 1)), *labels.shape[1:])
    with torch.autocast(device_type=images.device.type, enabled=False):
        squared = (recon.float() - target.float()) ** 2 * foreground
        total = squared.sum(dim=(-3, -2, -1)).double()
    channels = images.shape[-3]
    count = foreground.sum(dim=(-3, -2, -1)).double() * channels
    return total / (channels * labels[0].numel()), _nan_where_empty(total, count)
