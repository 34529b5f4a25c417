"""Segment-matching metrics of object-centric papers, vectorised over a batch.

Every metric starts from the same contingency table: true groups and predicted slots become
one-hot tensors and one ``einsum`` gives ``inter[b, g, k]``, the pixels of image b with true
label g and predicted slot k. Areas, unions and IoUs follow from it without a loop over pixels
or images; only the Hungarian matching runs on the CPU (scipy) on the small (G, K) IoU matrices.

Conventions shared by all functions (as in ``lib/evaluation/ari.py``):

* ``true``: (B, *S) integer label maps, 0 = background, > 0 = objects; negative values mark
  unlabelled pixels, which are dropped from the true *and* the predicted segments (as
  GENESIS's ``average_segcover`` drops them from the predicted masks).
* ``pred``: (B, *S) integer argmax slot per pixel, values in [0, num_slots).
* A predicted segment is the set of pixels a slot wins, background pixels included: with
  ``ignore_background`` only the *true* background segment is left out, the predicted segments
  keep their background pixels (so a slot that spills onto the background loses IoU). This is
  what GENESIS, Dittadi et al., OCLF and ClevrTex all do.
* Per-image scores are float64 (B,); an image where a score is undefined (no true segment is
  scored, e.g. no foreground with ``ignore_background``) gets NaN and callers leave NaNs out of
  their means (``lib.evaluation.mean_ari`` does). The released codes return 0 there (GENESIS,
  Dittadi) or skip the image (OCLF); 0 would bias the mean over datasets with empty scenes.

Sources (read, not copied):

* SC / mSC: ``applied-ai-lab/genesis`` ``utils/misc.py`` ``average_segcover`` and
  ``addtt/object-centric-library`` ``evaluation/metrics/segmentation_covering.py``.
* mIoU: ``karazijal/clevrtex`` ``ool/clevrtex_eval.py`` ``CLEVRTEX_Evaluator.update``
  (``mIoU_fg``, the value its ``evaluation.ipynb`` reports as mIoU; ``acc`` for the count).
* mBO: ``amazon-science/object-centric-learning-framework`` ``ocl/metrics/masks.py``
  (``AverageBestOverlapMetric`` = ``UnsupervisedMaskIoUMetric(matching="best_overlap")``, with
  ``ignore_background: true`` in its CLEVR / MOVi configs).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor


def _flatten_labels(true: Tensor, pred: Tensor) -> tuple[Tensor, Tensor]:
    """Validate the label maps and flatten them to (B, N) int64."""
    if true.shape != pred.shape:
        raise ValueError(
            f"true {tuple(true.shape)} and pred {tuple(pred.shape)} must have the same shape"
        )
    if true.dim() < 2:
        raise ValueError(f"labels need a batch dimension, got shape {tuple(true.shape)}")
    if true.dtype.is_floating_point or pred.dtype.is_floating_point:
        raise TypeError("segmentation metrics take integer label maps (argmax the masks first)")
    batch = true.shape[0]
    return true.reshape(batch, -1).long(), pred.reshape(batch, -1).long()


def contingency_table(true: Tensor, pred: Tensor, num_slots: int | None = None) -> Tensor:
    """Pixels per (true label, predicted slot) pair, per image.

    Args:
        true: (B, *S) integer true labels (0 = background, negative = not counted).
        pred: (B, *S) integer predicted slot per pixel, in [0, num_slots).
        num_slots: K, the number of predicted slots; None = ``pred.max() + 1`` (a host sync;
            pass K to keep slots that win no pixel as empty columns and to skip that sync).

    Returns:
        (B, G, K) float64 counts with G = ``true.max() + 1`` (at least 1); row g is label g
        (labels absent from an image are empty rows).
    """
    true_flat, pred_flat = _flatten_labels(true, pred)
    if pred_flat.numel() and pred_flat.min() < 0:
        raise ValueError("pred must be >= 0")
    if num_slots is None:
        num_slots = int(pred_flat.max().item()) + 1 if pred_flat.numel() else 1
    elif pred_flat.numel() and pred_flat.max() >= num_slots:
        raise ValueError(f"pred has a slot index >= num_slots={num_slots}")
    num_true = int(true_flat.max().item()) + 1 if true_flat.numel() else 1
    num_true = max(num_true, 1)
    counted = (true_flat >= 0).unsqueeze(-1)
    # Counts of 0/1 products are exact in float32 up to 2**24 pixels per image; autocast would
    # round them in bf16, so it is switched off.
    with torch.autocast(device_type=true_flat.device.type, enabled=False):
        true_oh = torch.nn.functional.one_hot(true_flat.clamp(min=0), num_true).float() * counted
        pred_oh = torch.nn.functional.one_hot(pred_flat, num_slots).float()
        # (B, N, G) x (B, N, K) -> (B, G, K) as one batched matmul.
        inter = torch.bmm(true_oh.transpose(1, 2), pred_oh)
    return inter.double()


def _areas_and_iou(inter: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """True areas (B, G), predicted areas (B, K) and IoU (B, G, K) from a contingency table."""
    true_area = inter.sum(dim=2)
    pred_area = inter.sum(dim=1)
    union = true_area.unsqueeze(2) + pred_area.unsqueeze(1) - inter
    # An empty true segment against an empty slot: no overlap to reward, IoU 0 (as OCLF's
    # iou_empty and ClevrTex's nan_to_num).
    iou = torch.where(union > 0, inter / union.clamp(min=1.0), torch.zeros_like(inter))
    return true_area, pred_area, iou


def _scored_segments(true_area: Tensor, ignore_background: bool) -> Tensor:
    """(B, G) bool: the true segments a metric averages over (non-empty, label >= 1 for fg)."""
    scored = true_area > 0
    if ignore_background:
        scored[:, 0] = False
    return scored


def _nan_where_empty(total: Tensor, norm: Tensor) -> Tensor:
    """total / norm per image, NaN where norm is 0 (nothing scored)."""
    out = total / norm.clamp(min=1e-300)
    return torch.where(norm > 0, out, torch.full_like(out, float("nan")))


def _covering(inter: Tensor, ignore_background: bool, weighted: bool) -> Tensor:
    true_area, _, iou = _areas_and_iou(inter)
    best = iou.max(dim=2).values  # (B, G): best IoU of each true segment over all slots
    scored = _scored_segments(true_area, ignore_background).double()
    weight = scored * true_area if weighted else scored
    return _nan_where_empty((weight * best).sum(dim=1), weight.sum(dim=1))


def segmentation_covering(
    true: Tensor, pred: Tensor, ignore_background: bool = True, num_slots: int | None = None
) -> Tensor:
    """Segmentation covering (SC) of the true segments by the predicted ones, per image.

    SC = sum_g |g| max_k IoU(g, k) / sum_g |g| over the true segments g (GENESIS
    ``average_segcover``'s ``scaled_sc``; Dittadi et al.'s "SC"). IoUs are taken over all counted
    pixels: the predicted segments keep their background pixels.

    Args:
        true: (B, *S) integer true labels (0 = background, negative = not counted).
        pred: (B, *S) integer argmax slot per pixel.
        ignore_background: leave the background segment (label 0) out of the true segments
            (the foreground SC that GENESIS and Dittadi et al. report); predicted segments are
            unchanged.
        num_slots: K, or None for ``pred.max() + 1``.

    Returns:
        (B,) float64 SC in [0, 1]; NaN where no true segment is scored (no foreground pixel
        with ``ignore_background``), where the released codes return 0.
    """
    return _covering(contingency_table(true, pred, num_slots), ignore_background, weighted=True)


def mean_segmentation_covering(
    true: Tensor, pred: Tensor, ignore_background: bool = True, num_slots: int | None = None
) -> Tensor:
    """Mean segmentation covering (mSC): the unweighted mean over true segments of their best IoU.

    mSC = mean_g max_k IoU(g, k) (GENESIS ``average_segcover``'s ``mean_sc``; Dittadi et al.'s
    "mSC"). By definition equal to ``mean_best_overlap``.

    Args:
        true: (B, *S) integer true labels (0 = background, negative = not counted).
        pred: (B, *S) integer argmax slot per pixel.
        ignore_background: leave the background segment out of the mean (foreground mSC).
        num_slots: K, or None for ``pred.max() + 1``.

    Returns:
        (B,) float64 mSC in [0, 1]; NaN where no true segment is scored.
    """
    return _covering(contingency_table(true, pred, num_slots), ignore_background, weighted=False)


def mean_best_overlap(
    true: Tensor, pred: Tensor, ignore_background: bool = True, num_slots: int | None = None
) -> Tensor:
    """Mean best overlap (mBO, DINOSAUR / OCLF ``AverageBestOverlapMetric``), per image.

    For each non-empty true object the best IoU over the predicted segments (a slot may be the
    best for several objects), averaged over the true objects of the image. OCLF drops the
    background class from the targets only (``ignore_background: true`` on CLEVR / MOVi) and
    skips images without targets; the value equals ``mean_segmentation_covering``.

    Args:
        true: (B, *S) integer true labels (0 = background, negative = not counted).
        pred: (B, *S) integer argmax slot per pixel.
        ignore_background: leave the background segment out of the true objects.
        num_slots: K, or None for ``pred.max() + 1``.

    Returns:
        (B,) float64 mBO in [0, 1]; NaN where the image has no scored true object.
    """
    return mean_segmentation_covering(true, pred, ignore_background, num_slots)


def _hungarian_matched_iou(iou: Tensor) -> Tensor:
    """(B, G) IoU of each true segment with its Hungarian partner (0 when it has none)."""
    cost = iou.detach().cpu().numpy()
    batch, num_true, _ = cost.shape
    rows, cols, images = [], [], []
    for b in range(batch):  # scipy has no batched solver; (G, K) is tiny, this is cheap
        r, c = linear_sum_assignment(cost[b], maximize=True)
        rows.append(r)
        cols.append(c)
        images.append(np.full(len(r), b))
    rows_np, cols_np, images_np = (np.concatenate(x) for x in (rows, cols, images))
    matched = np.zeros((batch, num_true))
    matched[images_np, rows_np] = cost[images_np, rows_np, cols_np]
    return torch.from_numpy(matched).to(iou.device)


def _hungarian_miou(inter: Tensor, ignore_background: bool, per_true_object: bool) -> Tensor:
    true_area, pred_area, iou = _areas_and_iou(inter)
    matched = _hungarian_matched_iou(iou)
    scored = _scored_segments(true_area, ignore_background)
    numerator = (matched * scored).sum(dim=1)
    if per_true_object:
        return _nan_where_empty(numerator, scored.sum(dim=1).double())
    # ClevrTex divides by the number of matched pairs in which the true or the predicted segment
    # is non-empty (both padded to the same count), so predicted segments without a true partner
    # count as IoU 0. Which zero-IoU pairs the solver forms is a tie; we take the tie-break that
    # pairs as many non-empty segments as possible, which makes that count
    # max(#non-empty true, #non-empty predicted) and the result independent of the solver.
    num_true = (true_area > 0).sum(dim=1)
    num_pred = (pred_area > 0).sum(dim=1)
    pairs = torch.maximum(num_true, num_pred).double()
    if ignore_background:
        # The background pair leaves the count only where there is a background (ClevrTex
        # subtracts 1 unconditionally, which is wrong for images without background pixels).
        pairs = pairs - (true_area[:, 0] > 0).double()
    score = numerator / pairs.clamp(min=1.0)
    return torch.where(scored.any(dim=1), score, torch.full_like(score, float("nan")))


def hungarian_miou(
    true: Tensor,
    pred: Tensor,
    ignore_background: bool = True,
    num_slots: int | None = None,
    per_true_object: bool = False,
) -> Tensor:
    """Mean IoU after Hungarian matching of true and predicted segments (ClevrTex mIoU), per image.

    As ClevrTex's ``CLEVRTEX_Evaluator`` (its reported ``mIoU_fg``): all true segments,
    background included, are matched one-to-one to the predicted segments so that the total
    IoU is maximal; true objects left without a slot (more objects than slots) score 0. The
    foreground mIoU is the sum of the matched IoUs of the true objects divided by the number of
    pairs with a non-empty side, less the background pair: ``max(#true, #pred) - 1`` with
    ``#true`` the non-empty true segments (background included) and ``#pred`` the slots that win
    a pixel. So surplus predicted segments (e.g. an object split over two slots) also count as
    IoU 0. Zero-IoU ties are broken to pair non-empty segments (see the comment in the code).

    Args:
        true: (B, *S) integer true labels (0 = background, negative = not counted).
        pred: (B, *S) integer argmax slot per pixel.
        ignore_background: leave the background segment's IoU and pair out of the mean (it
            still takes part in the matching, as in ClevrTex).
        num_slots: K, or None for ``pred.max() + 1``.
        per_true_object: divide by the number of scored true segments instead, i.e. the mean
            over true objects with unmatched ones at 0 and surplus slots not penalised (the
            convention of OCLF's ``UnsupervisedMaskIoUMetric``, which however matches without
            the background).

    Returns:
        (B,) float64 mIoU in [0, 1]; NaN where no true segment is scored (no foreground with
        ``ignore_background``; ClevrTex gives 0 or NaN there).
    """
    inter = contingency_table(true, pred, num_slots)
    return _hungarian_miou(inter, ignore_background, per_true_object)


def _count_accuracy(inter: Tensor) -> Tensor:
    true_area, pred_area, _ = _areas_and_iou(inter)
    num_true = (true_area > 0).sum(dim=1)
    num_pred = (pred_area > 0).sum(dim=1)
    return (num_true == num_pred).double()


def object_count_accuracy(true: Tensor, pred: Tensor, num_slots: int | None = None) -> Tensor:
    """Whether the number of predicted objects equals the number of true objects, per image.

    A slot counts as a segment where it wins at least one counted pixel (argmax). As in
    ClevrTex (``acc`` in ``CLEVRTEX_Evaluator.update``), the number of such slots is compared
    with the number of distinct labels present, background included when the image has
    background pixels; i.e. the predicted object count is the number of winning slots minus one
    background slot where there is background, and the true count is the number of distinct
    labels > 0. An image without foreground is counted right when a single slot wins every pixel.

    Args:
        true: (B, *S) integer true labels (0 = background, negative = not counted).
        pred: (B, *S) integer argmax slot per pixel.
        num_slots: K, or None for ``pred.max() + 1``.

    Returns:
        (B,) float64: 1.0 where the counts agree, else 0.0 (always defined).
    """
    return _count_accuracy(contingency_table(true, pred, num_slots))


def foreground_mse(images: Tensor, recon: Tensor, labels: Tensor) -> Tensor:
    """Mean squared error per pixel and channel over the foreground pixels (labels > 0).

    Args:
        images: (B, C, H, W) inputs.
        recon: (B, C, H, W) reconstructions, or (B, *T, C, H, W) for several steps at once
            (e.g. (B, T+1, C, H, W)).
        labels: (B, H, W) integer label maps; pixels with label > 0 are foreground.

    Returns:
        (B,) or (B, *T) float64 MSE; NaN for an image without foreground (callers leave NaNs out
        of their means). Normalised like the model's ``mse`` metric (per pixel and channel).
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
    count = foreground.sum(dim=(-3, -2, -1)).double() * images.shape[-3]
    return _nan_where_empty(total, count)


def segmentation_scores(
    true: Tensor, pred: Tensor, ignore_background: bool = True, num_slots: int | None = None
) -> dict[str, Tensor]:
    """All label-map metrics of this module from one contingency table (one einsum, one sync).

    Args:
        true: (B, *S) integer true labels (0 = background, negative = not counted).
        pred: (B, *S) integer argmax slot per pixel.
        ignore_background: for ``sc``, ``msc``, ``mbo`` and ``miou`` (see their functions).
        num_slots: K, or None for ``pred.max() + 1``.

    Returns:
        ``{"sc", "msc", "mbo", "miou", "count_acc"}`` each (B,) float64, as returned by
        ``segmentation_covering``, ``mean_segmentation_covering``, ``mean_best_overlap``,
        ``hungarian_miou`` and ``object_count_accuracy``.
    """
    inter = contingency_table(true, pred, num_slots)
    msc = _covering(inter, ignore_background, weighted=False)
    return {
        "sc": _covering(inter, ignore_background, weighted=True),
        "msc": msc,
        "mbo": msc.clone(),
        "miou": _hungarian_miou(inter, ignore_background, per_true_object=False),
        "count_acc": _count_accuracy(inter),
    }
