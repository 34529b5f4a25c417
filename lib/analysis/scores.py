"""The numbers printed on figures: per-image ARI (through ``lib.evaluation.ari``), per-step
MSE, and the one percentage formatter of the figures."""

from __future__ import annotations

import math

from torch import Tensor

from lib.evaluation.ari import adjusted_rand_index


def segmentation_scores(true_labels: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """ARI and foreground ARI of the argmax slot against true label maps, per image.

    Args:
        true_labels: (N, H, W) int64 label maps, 0 = background.
        masks: (N, K, H, W) softmax masks.

    Returns:
        ``(ari, fg_ari)``, each (N,) float64 from ``adjusted_rand_index``; fg ARI is NaN for
        an image without foreground.
    """
    pred = masks.argmax(dim=1).cpu()
    true_labels = true_labels.cpu()
    return (
        adjusted_rand_index(true_labels, pred, ignore_background=False),
        adjusted_rand_index(true_labels, pred, ignore_background=True),
    )


def step_metrics(
    image: Tensor, masks: Tensor, recon: Tensor, true_mask: Tensor | None
) -> dict[str, list[float]]:
    """MSE, ARI and foreground ARI of one image after each refinement step.

    Args:
        image: (3, H, W) input.
        masks: (T+1, K, H, W) softmax masks.
        recon: (T+1, 3, H, W) reconstructions.
        true_mask: (H, W) label map, or None (the ARI lists are then NaN).

    Returns:
        ``{"mse": [T+1], "ari": [T+1], "fg_ari": [T+1]}`` of floats (NaN where undefined);
        MSE is the mean over pixels and channels.
    """
    steps = masks.shape[0]
    mse = ((recon.float() - image.float()[None]) ** 2).mean(dim=(1, 2, 3)).tolist()
    if true_mask is None:
        nan = [float("nan")] * steps
        return {"mse": mse, "ari": nan, "fg_ari": list(nan)}
    ari, fg = segmentation_scores(true_mask[None].expand(steps, -1, -1), masks)
    return {"mse": mse, "ari": ari.tolist(), "fg_ari": fg.tolist()}


def format_percent(value: float | None, decimals: int = 1) -> str:
    """A fraction (e.g. an ARI in [-1, 1]) as a percentage for labels and log lines.

    Args:
        value: the fraction, or None / NaN when undefined.
        decimals: digits after the point.

    Returns:
        ``"97.3"`` for 0.973 (no ``%`` sign), ``"n/a"`` for None or NaN.
    """
    if value is None or math.isnan(float(value)):
        return "n/a"
    return f"{100.0 * float(value):.{decimals}f}"
