"""TensorBoard image summaries of IODINE outputs (grids built with torchvision's make_grid)."""

from __future__ import annotations

from typing import Any

import torch
from torchvision.utils import make_grid


def image_grids(
    images: torch.Tensor, out: dict[str, torch.Tensor], num_images: int
) -> dict[str, torch.Tensor]:
    """Picture grids of the first images of a batch, one row per image.

    Args:
        images: (B, 3, H, W) inputs in [0, 1].
        out: model outputs with ``recon`` (B, T+1, 3, H, W), ``masks`` (B, T+1, K, H, W) and
            ``components`` (B, T+1, K, 3, H, W).
        num_images: rows to show (at most B).

    Returns:
        ``{name: (3, H', W') float grid in [0, 1]}`` for
        ``inputs`` (a row of inputs), ``reconstructions`` (input | final reconstruction),
        ``masks`` (the K final masks, grey), ``slots`` (the K masked components m_k * mu_k at
        the final step) and ``refinement`` (input | reconstruction at t = 0..T).
    """
    n = min(num_images, images.shape[0])
    x = images[:n].detach().float().cpu().clamp(0, 1)
    recon = out["recon"][:n].detach().float().cpu().clamp(0, 1)  # (n, T+1, 3, H, W)
    masks = out["masks"][:n, -1].detach().float().cpu()  # (n, K, H, W)
    comps = out["components"][:n, -1].detach().float().cpu()  # (n, K, 3, H, W)
    k = masks.shape[1]
    steps = recon.shape[1]
    masked = (masks[:, :, None] * comps).clamp(0, 1)  # (n, K, 3, H, W)
    grey_masks = masks[:, :, None].expand(-1, -1, 3, -1, -1)

    def rows(tiles: torch.Tensor, per_row: int) -> torch.Tensor:
        # tiles: (n, per_row, 3, H, W) -> one grid with a row per image.
        return make_grid(tiles.reshape(-1, *tiles.shape[2:]), nrow=per_row, padding=1, pad_value=1)

    return {
        "inputs": make_grid(x, nrow=n, padding=1, pad_value=1),
        "reconstructions": rows(torch.stack([x, recon[:, -1]], dim=1), 2),
        "masks": rows(grey_masks, k),
        "slots": rows(masked, k),
        "refinement": rows(torch.cat([x[:, None], recon], dim=1), steps + 1),
    }


def add_image_summaries(
    writer: Any,
    prefix: str,
    images: torch.Tensor,
    out: dict[str, torch.Tensor],
    step: int,
    num: int,
) -> None:
    """Write the grids of ``image_grids`` as TensorBoard images ``<prefix>/<name>``.

    Args:
        writer: a ``torch.utils.tensorboard.SummaryWriter``.
        prefix: tag prefix (``train_images`` or ``eval_images``).
        images, out, num: as for ``image_grids``.
        step: global step (iteration).
    """
    for name, grid in image_grids(images, out, num).items():
        writer.add_image(f"{prefix}/{name}", grid, step)
