"""``folder:<path>`` datasets: a folder of images with optional label-map PNGs.

Layouts::

    <path>/images/<name>.png|.jpg|.jpeg   images, converted to RGB, in lexicographic order of
                                          file name (extensions mixed freely)
    <path>/<name>.png|.jpg|.jpeg          the same without the images folder (the older port's
                                          flat layout), used when <path>/images/ does not exist
    <path>/masks/<stem>.png               optional, for either layout: the label map of image
                                          <stem>.*, 8-bit single-channel (mode L) or palette
                                          (mode P) PNG: 0 = background, 1..N = objects

Masks are PNG only (JPEG's lossy compression would change the labels). Without a ``masks``
folder every item's mask is None and ARI cannot be computed (a warning says so). With one,
every image needs its mask. File headers (mode, size) are checked when the dataset is built;
pixel data is decoded when an item is read, and a truncated or unreadable file then fails with
its path.
"""

from __future__ import annotations

import logging
import os
from collections import Counter

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from lib.data.datasets.base import ItemFormat, decode_image, read_label_map
from lib.errors import DatasetError, MissingDatasetError

logger = logging.getLogger(__name__)

MASK_MODES = ("L", "P")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def _header(path: str) -> tuple[str, tuple[int, int]]:
    """Mode and (width, height) of an image file, reading only its header."""
    try:
        with Image.open(path) as im:
            return im.mode, im.size
    except OSError as exc:  # includes PIL.UnidentifiedImageError
        raise DatasetError(
            f"{path}: cannot read the image header, not a PNG or JPEG? ({exc})"
        ) from exc


class FolderDataset(Dataset):
    """Images (and label maps) from a folder; see the module docstring for the layout.

    Args:
        cfg: the config (``INPUT.IMAGE_SIZE``, ``DATASETS.MAX_OBJECTS``).
        is_train: unused (no augmentation); kept for the registry's constructor signature.
        path: the dataset folder.

    Items are ``(image float32 (3, S, S) in [0, 1], mask int64 (S, S) or None)``, centre-cropped.

    Attributes:
        provenance: source, path, layout, num_examples, has_masks, resize.
        layout: ``"images"`` (``<path>/images/``) or ``"flat"`` (images directly in ``<path>``).
        has_masks: whether items carry label maps.
        files: image paths in order; ``mask_files``: mask paths or None.

    Raises:
        MissingDatasetError: the folder, any image in it, or a mask is missing.
        ValueError: an unreadable image header, a mask of the wrong mode or a size different
            from its image, two images of one stem with masks; when an item is read:
            undecodable (truncated) data, or more objects than ``DATASETS.MAX_OBJECTS`` (> 0).
    """

    def __init__(self, cfg, is_train: bool, path: str):
        self.root = path
        self.format = ItemFormat.from_cfg(cfg, is_train, "folder")
        if not os.path.isdir(path):
            raise MissingDatasetError(f"folder dataset {path}: no such folder")
        image_dir = os.path.join(path, "images")
        self.layout = "images" if os.path.isdir(image_dir) else "flat"
        if self.layout == "flat":
            image_dir = path
        names = sorted(
            n
            for n in os.listdir(image_dir)
            if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(image_dir, n))
        )
        if not names:
            where = image_dir if self.layout == "images" else f"{path} (and no images/ folder)"
            raise MissingDatasetError(
                f"folder dataset {path}: no *.png, *.jpg or *.jpeg image in {where}"
            )
        self.files = [os.path.join(image_dir, n) for n in names]
        mask_dir = os.path.join(path, "masks")
        self.has_masks = os.path.isdir(mask_dir)
        self.mask_files: list[str] | None = None
        if self.has_masks:
            stems = [os.path.splitext(n)[0] for n in names]
            clashes = sorted(stem for stem, count in Counter(stems).items() if count > 1)
            if clashes:
                raise DatasetError(
                    f"folder dataset {path}: images {clashes} exist with several extensions, "
                    "so their masks (masks/<stem>.png) would be shared; rename them"
                )
            self.mask_files = [os.path.join(mask_dir, f"{stem}.png") for stem in stems]
            for image_file, mask_file in zip(self.files, self.mask_files):
                if not os.path.isfile(mask_file):
                    raise MissingDatasetError(
                        f"folder dataset {path}: image {image_file} has no mask {mask_file}"
                    )
                mode, size = _header(mask_file)
                if mode not in MASK_MODES:
                    raise DatasetError(
                        f"{mask_file}: mask has PIL mode {mode!r}; a mask must be an 8-bit "
                        "single-channel (L) or palette (P) PNG label map"
                    )
                image_size = _header(image_file)[1]
                if size != image_size:
                    raise DatasetError(
                        f"{mask_file}: mask is {size[0]}x{size[1]} (WxH) but its image "
                        f"{image_file} is {image_size[0]}x{image_size[1]}"
                    )
        else:
            for image_file in self.files:
                _header(image_file)
            logger.warning(
                "folder dataset %s has no masks folder (%s): images only, ARI will not be "
                "computed on it",
                path,
                mask_dir,
            )
        self.provenance = {
            "source": "folder",
            "path": os.path.abspath(path),
            "layout": self.layout,
            "num_examples": len(self.files),
            "has_masks": self.has_masks,
            **self.format.describe(not cfg.INPUT.RESIZE),
        }

    def __len__(self) -> int:
        return len(self.files)

    def load_arrays(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The example at its stored size: image uint8 (H, W, 3), mask uint8 (H, W) or None."""
        image_file = self.files[index]
        image = np.array(decode_image(image_file).convert("RGB"))  # a writable copy for torch
        if self.mask_files is None:
            return image, None
        mask = read_label_map(self.mask_files[index], MASK_MODES, image, image_file)
        return image, mask.astype(np.uint8)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        image, mask = self.load_arrays(index)
        where = self.files[index] if self.mask_files is None else self.mask_files[index]
        return self.format(image, mask, where=where)
