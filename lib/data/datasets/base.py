"""Shared item transform: uint8 arrays -> model input tensors at ``INPUT.IMAGE_SIZE``."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lib import spec
from lib.errors import DatasetError

# INPUT.RESIZE values: TF 1.14 resize_images (released), antialiased bilinear, or nearest-exact.
RESIZE_MODES = spec.RESIZE_MODES


def square_crop_box(height: int, width: int) -> tuple[int, int, int, int]:
    """Centre square crop of a frame.

    Args:
        height, width: frame size in pixels.

    Returns:
        ``(row0, row1, col0, col1)`` of the largest centred square.
    """
    side = min(height, width)
    r0 = (height - side) // 2
    c0 = (width - side) // 2
    return r0, r0 + side, c0, c0 + side


def _writable(array: np.ndarray) -> np.ndarray:
    # torch.from_numpy warns on read-only arrays (memory maps, PIL buffers): copy those.
    array = np.ascontiguousarray(array)
    return array if array.flags.writeable else array.copy()


def tf1_resize_indices(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sampling of TF 1.14 ``tf.image.resize_images`` (align_corners and half_pixel_centers
    False, the released pipeline's call) along one axis.

    Output pixel i reads source coordinate ``i * in_size / out_size`` (no half-pixel offset):
    bilinear blends rows ``lo`` and ``hi = min(lo + 1, in_size - 1)`` with weight ``frac`` on
    ``hi``; nearest neighbour reads ``lo = floor(i * scale)`` (CLEVR 192 -> 128: floor(1.5 i)).

    Args:
        in_size: source side in pixels.
        out_size: output side in pixels.

    Returns:
        ``(lo, hi, frac)``: int64 (out_size,), int64 (out_size,), float32 (out_size,).
    """
    scale = in_size / out_size
    src = np.arange(out_size, dtype=np.float64) * scale
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    return lo, hi, (src - lo).astype(np.float32)


def _tf1_bilinear(img: torch.Tensor, size: int) -> torch.Tensor:
    # TF interpolates along x within the two source rows, then along y: the same order here.
    lo_y, hi_y, fy = (torch.from_numpy(a) for a in tf1_resize_indices(img.shape[1], size))
    lo_x, hi_x, fx = (torch.from_numpy(a) for a in tf1_resize_indices(img.shape[2], size))
    top, bottom = img[:, lo_y], img[:, hi_y]  # (3, size, W)
    top = top[..., lo_x] + (top[..., hi_x] - top[..., lo_x]) * fx  # (3, size, size)
    bottom = bottom[..., lo_x] + (bottom[..., hi_x] - bottom[..., lo_x]) * fx
    return top + (bottom - top) * fy[:, None]


def to_model_input(
    image: np.ndarray,
    mask: np.ndarray | None,
    size: int,
    crop: tuple[int, int, int, int] | None = None,
    resize: str = "bilinear",
    uint8: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Crop and resize one example to the square model input.

    Args:
        image: uint8 (H, W, 3).
        mask: uint8 (H, W) label map or None.
        size: side of the output (``INPUT.IMAGE_SIZE``).
        crop: ``(row0, row1, col0, col1)`` to cut first (CLEVR's official crop), or None for
            the centre square crop (a no-op on square frames).
        resize: ``INPUT.RESIZE``: "tf1" (released: TF 1.14 ``resize_images``, bilinear without
            antialiasing or half-pixel centres, label maps nearest at floor(i * scale)),
            "bilinear" (antialiased, half-pixel centres) or "nearest" (the image sampled at the
            same pixel centres as the label map, so every pixel keeps one object's colour).

        uint8: return the image as uint8 (3, size, size) when no resize is needed (a quarter
            of the bytes to copy to a GPU; ``value / 255`` there gives the same floats).

    Returns:
        image float32 (3, size, size) in [0, 1] (resized as ``resize`` says, bit-exact
        ``value / 255`` when not resized), or uint8 with ``uint8`` and no resize, and mask
        int64 (size, size) (nearest neighbour) or None.

    Raises:
        ValueError: a non-square crop or an unknown ``resize``.
    """
    if resize not in RESIZE_MODES:
        raise DatasetError(f"INPUT.RESIZE must be one of {RESIZE_MODES}, got {resize!r}")
    h, w = image.shape[:2]
    r0, r1, c0, c1 = crop if crop is not None else square_crop_box(h, w)
    if r1 - r0 != c1 - c0:
        raise DatasetError(f"crop {(r0, r1, c0, c1)} is not square")
    img = torch.from_numpy(_writable(image[r0:r1, c0:c1])).permute(2, 0, 1)  # (3, h, w) uint8
    if uint8 and r1 - r0 == size:
        lab = None if mask is None else torch.from_numpy(_writable(mask[r0:r1, c0:c1])).long()
        return img.contiguous(), lab
    img = img.to(torch.float32).div_(255.0)
    lab = None
    if mask is not None:
        lab = torch.from_numpy(_writable(mask[r0:r1, c0:c1])).to(torch.int64)
    if r1 - r0 != size and resize == "tf1":
        img = _tf1_bilinear(img, size)
        if lab is not None:
            lo, _, _ = tf1_resize_indices(r1 - r0, size)
            index = torch.from_numpy(lo)
            lab = lab[index][:, index]
    elif r1 - r0 != size:
        if resize == "nearest":
            img = F.interpolate(img[None], size=(size, size), mode="nearest-exact")[0]
        else:
            img = F.interpolate(
                img[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )[0].clamp_(0.0, 1.0)
        if lab is not None:
            # "nearest-exact" samples pixel centres; plain "nearest" is shifted by half a pixel.
            lab = F.interpolate(lab[None, None].float(), size=(size, size), mode="nearest-exact")
            lab = lab[0, 0].to(torch.int64)
    return img, lab


def check_max_objects(mask: np.ndarray, max_objects: int, where: str) -> None:
    """Raise when a label map has more objects (distinct labels > 0) than ``max_objects``.

    Args:
        mask: uint8 (H, W) label map.
        max_objects: ``DATASETS.MAX_OBJECTS``; 0 = no limit.
        where: file or example named in the message.
    """
    if max_objects <= 0:
        return
    labels = np.flatnonzero(np.bincount(mask.ravel(), minlength=1)[1:]) + 1
    if len(labels) > max_objects:
        raise DatasetError(
            f"{where}: label map has {len(labels)} objects (labels {labels.tolist()}), more "
            f"than DATASETS.MAX_OBJECTS = {max_objects}"
        )
