"""The contingency table of two labelings and the adjusted Rand index (ARI) computed from it,
vectorised over a batch.

ARI follows ``multi_object_datasets/segmentation_metrics.py`` (DeepMind): the Hubert-Arabie
ARI of the (true group, predicted slot) contingency table, per image. Where the released code
is undefined:

* Pixels that belong to no true group (negative labels, and label 0 for the foreground ARI)
  are not counted, as in the released code.
* Both labelings put every counted pixel in one group (or all in singletons, or fewer than two
  pixels are counted): the released formula divides 0 by 0; the image scores 1, as
  ``sklearn.metrics.adjusted_rand_score`` does.
* No counted pixel at all (foreground ARI of an image without foreground): NaN, left out of
  the means (scikit-learn, the object-centric library, ClevrTex and OCLF would score 1,
  EfficientMORL 0).
"""

from __future__ import annotations

import torch
from torch import Tensor


def contingency_table(true: Tensor, pred: Tensor, num_slots: int | None = None) -> Tensor:
    """Pixels per (true label, predicted slot) pair, per image.

    Args:
        true: (B, *S) integer true labels (0 = background, negative = not counted).
        pred: (B, *S) integer predicted slot per pixel, in [0, num_slots).
        num_slots: K; None = ``pred.max() + 1`` (a host sync; pass K to keep slots that win
            no pixel as empty columns).

    Returns:
        (B, G, K) float64 counts, G = ``true.max() + 1`` over the batch (at least 1); row g is
        label g (labels absent from an image are empty rows).

    Raises:
        ValueError / TypeError: shapes that differ, no batch dimension, float labels, or slot
            indices outside [0, num_slots).
    """
    if true.shape != pred.shape or true.dim() < 2:
        raise ValueError(
            f"true {tuple(true.shape)} and pred {tuple(pred.shape)} must be (B, ...) of the same shape"
        )
    if true.dtype.is_floating_point or pred.dtype.is_floating_point:
        raise TypeError("segmentation metrics take integer label maps (argmax the masks first)")
    true, pred = true.reshape(true.shape[0], -1).long(), pred.reshape(pred.shape[0], -1).long()
    if pred.numel() and pred.min() < 0:
        raise ValueError("pred must be >= 0")
    if num_slots is None:
        num_slots = int(pred.max().item()) + 1 if pred.numel() else 1
    elif pred.numel() and pred.max() >= num_slots:
        raise ValueError(f"pred has a slot index >= num_slots={num_slots}")
    num_true = max(int(true.max().item()) + 1 if true.numel() else 1, 1)
    # Counts of 0/1 products are exact in float32 up to 2**24 pixels per image; autocast would
    # round them in bf16, so it is switched off.
    with torch.autocast(device_type=true.device.type, enabled=False):
        counted = (true >= 0).unsqueeze(-1)
        true_oh = torch.nn.functional.one_hot(true.clamp(min=0), num_true).float() * counted
        pred_oh = torch.nn.functional.one_hot(pred, num_slots).float()
        inter = torch.bmm(true_oh.transpose(1, 2), pred_oh)  # (B, G, K)
    return inter.double()


def ari_from_table(table: Tensor) -> Tensor:
    """(B,) float64 ARI of (B, G, K) contingency tables (1 for the 0/0 case, NaN when empty)."""
    n = table.sum(dim=(1, 2))
    # Twice the number of pixel pairs in the same group: n (n - 1); the factors of 1/2 cancel.
    rand_index = (table * (table - 1)).sum(dim=(1, 2))
    true_index = (table.sum(2) * (table.sum(2) - 1)).sum(1)
    pred_index = (table.sum(1) * (table.sum(1) - 1)).sum(1)
    expected = true_index * pred_index / (n * (n - 1)).clamp(min=1.0)
    denominator = (true_index + pred_index) / 2 - expected
    # The denominator is 0 exactly when both labelings are one group or all singletons (or
    # n < 2): they agree, score 1.
    ari = torch.where(denominator == 0, torch.ones_like(n), (rand_index - expected) / denominator)
    return torch.where(n > 0, ari, torch.full_like(ari, float("nan")))


def adjusted_rand_index(
    true_labels: Tensor, pred_labels: Tensor, ignore_background: bool = False
) -> Tensor:
    """Per-image adjusted Rand index between a true and a predicted label map.

    Args:
        true_labels: (B, *S) integer ground-truth group per pixel; negative values are not
            counted.
        pred_labels: (B, *S) integer predicted group per pixel (the argmax slot), >= 0.
        ignore_background: drop the pixels whose true label is 0 first (foreground ARI, the
            published IODINE number).

    Returns:
        (B,) float64 ARI in [-1, 1]; 1 in the 0/0 case; NaN where no pixel is counted.
    """
    table = contingency_table(true_labels, pred_labels)
    return ari_from_table(table[:, 1:] if ignore_background else table)


def mean_ari(scores: Tensor) -> float | None:
    """Mean of per-image scores leaving out the undefined (NaN) ones; None when none is."""
    defined = scores[~torch.isnan(scores)]
    return float(defined.mean().item()) if defined.numel() else None
