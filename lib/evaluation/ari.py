"""Adjusted Rand index (ARI) of predicted segmentations, vectorised over a batch.

Follows ``multi_object_datasets/segmentation_metrics.py`` (DeepMind): true groups and predicted
slots become one-hot tensors, their contingency table comes from one ``einsum``, and the
Hubert-Arabie ARI is computed per image. Choices where the released code is undefined:

* Pixels that belong to no true group (negative labels, and the background label 0 for the
  foreground ARI) are not counted, as in the released code.
* Both labelings put every counted pixel in one group (or every pixel in its own group, or
  fewer than two pixels are counted): the released formula divides 0 by 0. Such an image
  scores 1, as ``sklearn.metrics.adjusted_rand_score`` does.
* An image with no counted pixel at all (foreground ARI of an image without foreground): the
  score is undefined and returned as NaN; ``mean_ari`` leaves such images out of the mean
  (scikit-learn would return 1 for empty labelings, which would inflate the foreground ARI of
  datasets with empty scenes).
"""

from __future__ import annotations

import torch
from torch import Tensor


def adjusted_rand_index(
    true_labels: Tensor, pred_labels: Tensor, ignore_background: bool = False
) -> Tensor:
    """Per-image adjusted Rand index between a true and a predicted label map.

    Args:
        true_labels: (B, *S) integer ground-truth group per pixel (S any spatial shape, e.g.
            (H, W)); negative values mark pixels that belong to no group and are not counted.
        pred_labels: (B, *S) integer predicted group per pixel (e.g. the argmax slot of the
            masks), values >= 0.
        ignore_background: drop the pixels whose true label is 0 first (foreground ARI, the
            published IODINE number).

    Returns:
        (B,) float64 ARI per image in [-1, 1]; 1 where both labelings put the counted pixels in a
        single group (the 0/0 case); NaN where no pixel is counted.
    """
    if true_labels.shape != pred_labels.shape:
        raise ValueError(
            f"true_labels {tuple(true_labels.shape)} and pred_labels "
            f"{tuple(pred_labels.shape)} must have the same shape"
        )
    if true_labels.dim() < 2:
        raise ValueError(f"labels need a batch dimension, got shape {tuple(true_labels.shape)}")
    if true_labels.dtype.is_floating_point or pred_labels.dtype.is_floating_point:
        raise TypeError("adjusted_rand_index takes integer label maps (argmax the masks first)")
    batch = true_labels.shape[0]
    true_flat = true_labels.reshape(batch, -1).long()
    pred_flat = pred_labels.reshape(batch, -1).long()
    if pred_flat.numel() and pred_flat.min() < 0:
        raise ValueError("pred_labels must be >= 0")

    counted = true_flat >= (1 if ignore_background else 0)
    num_true = int(true_flat.max().item()) + 1 if true_flat.numel() else 1
    num_pred = int(pred_flat.max().item()) + 1 if pred_flat.numel() else 1
    num_true = max(num_true, 1)
    # Autocast would run the einsum in bf16 and round the counts; float32 counts 0/1 products
    # exactly up to 2**24 pixels per image.
    with torch.autocast(device_type=true_flat.device.type, enabled=False):
        true_oh = torch.nn.functional.one_hot(true_flat.clamp(min=0), num_true).float()
        true_oh = true_oh * counted.unsqueeze(-1)
        pred_oh = torch.nn.functional.one_hot(pred_flat, num_pred).float()
        # (B, N, G) x (B, N, K) -> (B, G, K) pixels per (true group, predicted slot).
        contingency = torch.einsum("bng,bnk->bgk", true_oh, pred_oh).double()

    n_points = contingency.sum(dim=(1, 2))
    true_sizes = contingency.sum(dim=2)
    pred_sizes = contingency.sum(dim=1)
    # Twice the number of pixel pairs in the same group: n (n - 1); the factors of 1/2 cancel.
    rand_index = (contingency * (contingency - 1)).sum(dim=(1, 2))
    true_index = (true_sizes * (true_sizes - 1)).sum(dim=1)
    pred_index = (pred_sizes * (pred_sizes - 1)).sum(dim=1)
    pairs = n_points * (n_points - 1)
    expected = true_index * pred_index / pairs.clamp(min=1.0)
    maximum = (true_index + pred_index) / 2
    numerator = rand_index - expected
    denominator = maximum - expected
    # The denominator is 0 exactly when both labelings are a single group or all singletons
    # (or n < 2); then the labelings agree and the score is 1, as in scikit-learn.
    degenerate = denominator == 0
    ari = torch.where(degenerate, torch.ones_like(numerator), numerator / denominator)
    return torch.where(n_points > 0, ari, torch.full_like(ari, float("nan")))


def mean_ari(scores: Tensor) -> float | None:
    """Mean of per-image ARI scores, leaving out the undefined (NaN) ones.

    Args:
        scores: (B,) per-image ARI from ``adjusted_rand_index``.

    Returns:
        The mean over the defined scores, or None when no score is defined.
    """
    defined = scores[~torch.isnan(scores)]
    if defined.numel() == 0:
        return None
    return float(defined.mean().item())
