"""What every dataset class shares: the item geometry read from the config (``ItemFormat``),
the crop and resize to the model input, and the checks of stored pixels and labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lib import spec
from lib.errors import DatasetError

RESIZE_MODES = spec.RESIZE_CHOICES[1:]
# Relative overshoot of float pixels (e.g. 1.0000001 in a [0, 1] image) accepted and clipped.
FLOAT_SLACK = 1e-3


def square_crop_box(height: int, width: int) -> tuple[int, int, int, int]:
    """``(row0, row1, col0, col1)`` of the largest centred square of a height x width frame."""
    side = min(height, width)
    r0, c0 = (height - side) // 2, (width - side) // 2
    return r0, r0 + side, c0, c0 + side


def _tensor(array: np.ndarray) -> torch.Tensor:
    # torch.from_numpy warns on read-only arrays (memory maps, PIL buffers): copy those.
    array = np.ascontiguousarray(array)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def tf1_resize_indices(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sampling of TF 1.14 ``tf.image.resize_images`` (align_corners and half_pixel_centers
    False, the released pipeline's call) along one axis.

    Output pixel i reads source coordinate ``i * in_size / out_size``: bilinear blends rows
    ``lo`` and ``hi = min(lo + 1, in_size - 1)`` with weight ``frac`` on ``hi``; nearest
    neighbour reads ``lo`` (CLEVR 192 -> 128: floor(1.5 i)).

    Returns:
        ``(lo, hi, frac)``: int64 (out_size,), int64 (out_size,), float32 (out_size,).
    """
    src = np.arange(out_size, dtype=np.float64) * (in_size / out_size)
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    return lo, hi, (src - lo).astype(np.float32)


def _tf1_bilinear(img: torch.Tensor, size: int) -> torch.Tensor:
    # TF interpolates along x within the two source rows, then along y: the same order here.
    lo_y, hi_y, fy = (torch.from_numpy(a) for a in tf1_resize_indices(img.shape[1], size))
    lo_x, hi_x, fx = (torch.from_numpy(a) for a in tf1_resize_indices(img.shape[2], size))
    top, bottom = img[:, lo_y], img[:, hi_y]  # (3, size, W)
    top = top[..., lo_x] + (top[..., hi_x] - top[..., lo_x]) * fx
    bottom = bottom[..., lo_x] + (bottom[..., hi_x] - bottom[..., lo_x]) * fx
    return top + (bottom - top) * fy[:, None]


def resize_image(image: np.ndarray, size: int, resize: str) -> torch.Tensor:
    """Resize a square uint8 (h, h, 3) image to float32 (3, size, size) in [0, 1].

    Args:
        resize: "tf1" (TF 1.14 ``resize_images``: bilinear, no antialiasing or half-pixel
            centres), "bilinear" (antialiased, half-pixel centres), "nearest" (the label maps'
            sampling, so no pixel blends two objects), "pil_bilinear" / "pil_bicubic" (PIL's
            ``Image.resize`` on the 8-bit image, as ClevrTex's / EfficientMORL's loaders).
    """
    if resize.startswith("pil_"):
        filt = Image.BILINEAR if resize == "pil_bilinear" else Image.BICUBIC
        pil = Image.fromarray(np.ascontiguousarray(image)).resize((size, size), filt)
        return _tensor(np.asarray(pil)).permute(2, 0, 1).float().div_(255.0)
    img = _tensor(image).permute(2, 0, 1).float().div_(255.0)
    if resize == "tf1":
        return _tf1_bilinear(img, size)
    if resize == "nearest":
        return F.interpolate(img[None], size=(size, size), mode="nearest-exact")[0]
    out = F.interpolate(img[None], (size, size), mode="bilinear", antialias=True)
    return out[0].clamp_(0.0, 1.0)


def resize_labels(mask: np.ndarray, size: int, resize: str) -> torch.Tensor:
    """Nearest-neighbour resize of a square label map to int64 (size, size): TF 1.14's source
    index floor(i * scale) for "tf1", else the pixel centre floor((i + 0.5) * scale) (PIL's)."""
    lab = _tensor(mask).to(torch.int64)
    if mask.shape[0] == size:  # every method is the identity at the stored size
        return lab
    if resize == "tf1":
        index = torch.from_numpy(tf1_resize_indices(mask.shape[0], size)[0])
        return lab[index][:, index]
    out = F.interpolate(lab[None, None].double(), size=(size, size), mode="nearest-exact")
    return out[0, 0].to(torch.int64)


@dataclass(frozen=True)
class ItemFormat:
    """How a dataset turns a stored example into a model item, from the config.

    Attributes:
        size: ``INPUT.IMAGE_SIZE``.
        resize: the method used: ``INPUT.RESIZE``, or the source's own (``spec.DATA_RESIZE``)
            when that key is "".
        crop: ``INPUT.CROP`` ``(row0, row1, col0, col1)`` replacing the data's own crop, or None.
        native_labels: ``TEST.NATIVE_LABELS`` on an evaluation set: label maps stay at the
            cropped frame's resolution (not resized).
        max_objects: ``DATASETS.MAX_OBJECTS``; 0 = no limit.
    """

    size: int
    resize: str
    crop: tuple[int, int, int, int] | None
    native_labels: bool
    max_objects: int

    @classmethod
    def from_cfg(cls, cfg, is_train: bool, source: str) -> ItemFormat:
        """The format of a dataset of ``source`` (a key of ``spec.DATA_RESIZE``).

        Raises:
            DatasetError: an unknown ``INPUT.RESIZE`` or an ``INPUT.CROP`` that is not four
                integers of a square.
        """
        resize = str(cfg.INPUT.RESIZE) or spec.DATA_RESIZE[source]
        if resize not in RESIZE_MODES:
            raise DatasetError(f"INPUT.RESIZE must be one of {spec.RESIZE_CHOICES}, got {resize!r}")
        crop = tuple(int(v) for v in cfg.INPUT.CROP) or None
        if crop is not None and (
            len(crop) != 4 or crop[1] - crop[0] != crop[3] - crop[2] or crop[1] <= crop[0]
        ):
            raise DatasetError(f"INPUT.CROP {crop} is not (row0, row1, col0, col1) of a square")
        native = bool(cfg.TEST.NATIVE_LABELS) and not is_train
        return cls(int(cfg.INPUT.IMAGE_SIZE), resize, crop, native, int(cfg.DATASETS.MAX_OBJECTS))

    def describe(self, source_protocol: bool) -> dict:
        """The provenance entries saying how items were made (logged and in metrics.json)."""
        how = "the data's own protocol" if source_protocol else "INPUT.RESIZE"
        out = {"resize": f"{self.resize} ({how})", "labels_at": f"{self.size} (model input)"}
        if self.native_labels:
            out["labels_at"] = "stored resolution after the crop (TEST.NATIVE_LABELS)"
        if self.crop:
            out["crop_override"] = list(self.crop)
        return out

    def __call__(
        self,
        image: np.ndarray,
        mask: np.ndarray | None,
        crop: tuple[int, int, int, int] | None = None,
        uint8: bool = False,
        where: str = "",
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Crop and resize one stored example.

        Args:
            image: uint8 (H, W, 3); mask: (H, W) integer label map or None.
            crop: the data's own crop (CLEVR's official one), or None for the centre square;
                ``self.crop`` wins over it.
            uint8: return the image as uint8 (3, size, size) when no resize is needed.
            where: file or example named in errors.

        Returns:
            image float32 (3, size, size) in [0, 1] (``value / 255`` exactly when not
            resized) or uint8, and the label map int64 (size, size) (the cropped resolution
            with ``native_labels``) or None.

        Raises:
            DatasetError: the crop does not fit the frame, or more objects than
                ``max_objects`` (0 = no limit).
        """
        h, w = image.shape[:2]
        r0, r1, c0, c1 = self.crop or crop or square_crop_box(h, w)
        if r1 - r0 != c1 - c0 or r1 <= r0 or r0 < 0 or c0 < 0 or r1 > h or c1 > w:
            raise DatasetError(f"{where}: crop {(r0, r1, c0, c1)} is not a square in {h}x{w}")
        lab = None
        if mask is not None:
            labels = np.unique(mask[mask > 0]) if self.max_objects > 0 else []
            if len(labels) > self.max_objects > 0:
                raise DatasetError(
                    f"{where}: label map has {len(labels)} objects (labels {labels.tolist()}), "
                    f"more than DATASETS.MAX_OBJECTS = {self.max_objects}"
                )
            side = r1 - r0
            size = side if self.native_labels else self.size
            lab = resize_labels(mask[r0:r1, c0:c1], size, self.resize)
        image = image[r0:r1, c0:c1]
        if r1 - r0 == self.size:
            img = _tensor(image).permute(2, 0, 1)
            return (img.contiguous() if uint8 else img.float().div_(255.0)), lab
        return resize_image(image, self.size, self.resize), lab


def decode_image(path: str) -> Image.Image:
    """Fully decode an image file, so that truncation is found here, with the path.

    Raises:
        DatasetError: unreadable, truncated or corrupt data.
    """
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (OSError, SyntaxError, ValueError) as exc:  # includes PIL.UnidentifiedImageError
        raise DatasetError(
            f"{path}: cannot decode the image, truncated or corrupt ({exc})"
        ) from exc


def read_label_map(path: str, modes: tuple[str, ...], image: np.ndarray, image_path: str):
    """The (H, W) labels stored in ``path`` (palette: the indices), the label map of ``image``
    (H, W, 3) read from ``image_path``.

    Raises:
        DatasetError: undecodable data, a PIL mode not in ``modes``, or another size.
    """
    label_image = decode_image(path)
    if label_image.mode not in modes:
        raise DatasetError(f"{path}: mask has PIL mode {label_image.mode!r}, expected {modes}")
    mask = np.array(label_image)
    if mask.shape != image.shape[:2]:
        raise DatasetError(
            f"{path}: mask is {mask.shape} (HxW) but {image_path} is {image.shape[:2]}"
        )
    return mask


def checked_uint8(image: np.ndarray, scale: float, where: str) -> np.ndarray:
    """uint8 (H, W, 3) from stored pixel values (uint8 returned as is) times ``scale``
    (``detect_scale``); ``where`` names the file and key in errors.

    Raises:
        DatasetError: a NaN or infinite value (the first one's index named), or a value
            outside [0, 255 / scale].
    """
    if image.dtype == np.uint8:
        return image
    values = np.asarray(image, dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DatasetError(f"{where}: non-finite pixel value {values[index]} at index {index}")
    top = 255.0 / scale
    slack = FLOAT_SLACK * top  # rounding overshoot of a float image, clipped
    if values.size and (values.min() < -slack or values.max() > top + slack):
        raise DatasetError(
            f"{where}: pixel values in [{values.min():g}, {values.max():g}], outside [0, {top:g}]"
        )
    return np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)


def detect_scale(sample: np.ndarray, where: str) -> tuple[float, str]:
    """The pixel scale of stored images from a sample of them.

    Returns:
        ``(scale, description)``: 1 for integers (0..255), 255 for floats whose sample stays in
        [0, 1], 1 for floats in [0, 255].

    Raises:
        DatasetError: a dtype that is not an integer or a float.
    """
    kind = sample.dtype.kind
    if kind in "ui":
        return 1.0, f"{sample.dtype} in [0, 255]"
    if kind != "f":
        raise DatasetError(f"{where}: dtype {sample.dtype}, expected uint8 (or float) pixels")
    finite = sample[np.isfinite(sample)]
    if finite.size and finite.max() <= 1.0 + FLOAT_SLACK:
        return 255.0, f"{sample.dtype} in [0, 1], scaled by 255"
    return 1.0, f"{sample.dtype} in [0, 255]"
