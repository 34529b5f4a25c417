"""TensorBoard image summaries of IODINE outputs (grids built with torchvision's make_grid).

TensorBoard shows an image at its own pixel size, so small model inputs (16 px in the
quickstart) would arrive as a 69 x 69 grid; each grid is enlarged by an integer factor with
nearest-neighbour sampling so that every tile is at least ``MIN_TILE_PX`` pixels.
"""

from __future__ import annotations

from typing import Any

import torch

MIN_TILE_PX = 64


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
    # Imported here: torchvision's import loads torch._dynamo (about a second), which nothing
    # else in a training or evaluation process needs before the first picture.
    from torchvision.utils import make_grid

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
    """Write the grids of ``image_grids`` as TensorBoard images ``<prefix>/<name>``, enlarged
    by an integer factor (nearest neighbour) so that each tile is at least ``MIN_TILE_PX``
    pixels.

    Args:
        writer: a ``torch.utils.tensorboard.SummaryWriter``.
        prefix: tag prefix (``train_images`` or ``eval_images``).
        images, out, num: as for ``image_grids``.
        step: global step (iteration).
    """
    from lib.utils.palette import upscale_nearest  # imports torchvision (see image_grids)

    tile = min(images.shape[-2:])
    for name, grid in image_grids(images, out, num).items():
        grid = upscale_nearest(grid, min_tile=MIN_TILE_PX, tile_size=tile)
        writer.add_image(f"{prefix}/{name}", grid, step)
