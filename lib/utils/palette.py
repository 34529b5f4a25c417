"""Colours of label maps and tensor pictures (no matplotlib: the TensorBoard summaries use it).

Conventions: images are float tensors (3, H, W) in [0, 1]; masks (K, H, W) are softmax masks
in [0, 1]; label maps (H, W) are integers.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Fixed colours of label maps: label (or slot) i is drawn in PALETTE[i % len(PALETTE)].
# Entry 0 (dark grey) is the background of true label maps and slot 0 of predicted ones; the
# others are Tableau-10 followed by lighter Tableau-20 tones.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (64, 64, 64),
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (188, 189, 34),
    (23, 190, 207),
    (174, 199, 232),
    (255, 187, 120),
    (152, 223, 138),
    (255, 152, 150),
    (197, 176, 213),
    (196, 156, 148),
    (247, 182, 210),
    (219, 219, 141),
    (158, 218, 229),
    (127, 127, 127),
)


def colorize_labels(labels: Tensor) -> Tensor:
    """(..., H, W) integer labels >= 0 (true label maps or argmax slots) as (..., 3, H, W)
    float32 RGB in [0, 1], label i in ``PALETTE[i % len(PALETTE)]``; TypeError for floats."""
    if labels.dtype.is_floating_point:
        raise TypeError(f"colorize_labels takes integer label maps, got dtype {labels.dtype}")
    palette = torch.tensor(PALETTE, dtype=torch.float32, device="cpu") / 255.0  # (P, 3)
    index = labels.long().cpu().clamp(min=0) % len(PALETTE)
    rgb = palette[index]  # (..., H, W, 3)
    return rgb.movedim(-1, -3).contiguous()


def gray_to_rgb(values: Tensor) -> Tensor:
    """A grey map (..., H, W) in [0, 1] on three channels: (..., 3, H, W) float32 (a view)."""
    return values.float().unsqueeze(-3).expand(*values.shape[:-2], 3, *values.shape[-2:])


def masked_components(masks: Tensor, components: Tensor, background: str = "white") -> Tensor:
    """Each slot's component through its mask, m_k * mu_k + (1 - m_k) * background
    ("white" or "black"): masks (..., K, H, W), components (..., K, 3, H, W) -> (..., K, 3,
    H, W) float32 in [0, 1]."""
    if background not in ("white", "black"):
        raise ValueError(f"background must be 'white' or 'black', got {background!r}")
    m = masks.float().unsqueeze(-3)
    fill = 1.0 if background == "white" else 0.0
    return (m * components.float() + (1.0 - m) * fill).clamp(0.0, 1.0)


def slot_tile(mask: Tensor, masked: Tensor) -> Tensor:
    """One slot as one picture: its mask (H, W) in grey above its masked component (3, H, W);
    (3, 2H + 3, W + 2) float32, a one-column ``make_grid`` with a white 1-pixel border."""
    tiles = torch.stack([gray_to_rgb(mask.cpu()), masked.float().cpu()])
    from torchvision.utils import make_grid  # imported here: torchvision costs ~1 s to import

    return make_grid(tiles, nrow=1, padding=1, pad_value=1.0)


def upscale_factor(tile_size: int, min_tile: int = 64) -> int:
    """The smallest integer factor making a ``tile_size`` tile (>= 1, else ValueError) at
    least ``min_tile`` pixels wide: ``max(1, ceil(min_tile / tile_size))``."""
    if tile_size < 1:
        raise ValueError(f"tile_size must be >= 1, got {tile_size}")
    return max(1, math.ceil(min_tile / tile_size))


def upscale_nearest(pictures: Tensor, min_tile: int = 64, tile_size: int | None = None) -> Tensor:
    """Nearest-neighbour upscaling by an integer factor, so small tiles stay readable.

    Every pixel becomes an f x f block, f = ``upscale_factor(tile_size, min_tile)``: no
    interpolation, so masks and label colours keep their exact values (TensorBoard shows images
    at their own size, and 16-pixel tiles are too small to read).

    Args:
        pictures: (..., H, W) tensor, e.g. a batch of tiles (N, 3, H, W) before ``make_grid``
            or a finished grid (3, H', W').
        min_tile: wanted smallest tile side after upscaling.
        tile_size: side of one tile in pixels; default ``min(H, W)`` (right for a batch of
            tiles; pass it for a grid).

    Returns:
        (..., f H, f W) tensor of the same dtype (``pictures`` itself when f = 1).
    """
    if pictures.dim() < 2:
        raise ValueError(f"upscale_nearest needs (..., H, W), got shape {tuple(pictures.shape)}")
    size = min(pictures.shape[-2:]) if tile_size is None else tile_size
    factor = upscale_factor(size, min_tile)
    if factor == 1:
        return pictures
    return pictures.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
