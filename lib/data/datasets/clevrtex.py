"""``clevrtex:<dir>`` datasets: ClevrTex (Karazija et al. 2021) as its authors distribute it.

Layout (github karazijal/clevrtex, ``ool/clevrtex_eval.py``, class ``CLEVRTEX``): one folder per
variant, ``clevrtex_<variant>/``, holding (in any subfolders) per scene::

    CLEVRTEX_<variant>_<six digits>.png        the 240x320 image (RGBA or RGB; RGB used)
    CLEVRTEX_<variant>_<six digits>_flat.png   its label map: 0 = background, 1..N = objects
    CLEVRTEX_<variant>_<six digits>.json       scene metadata (optional here; ``metadata``)

Variants: ``full`` (the main set), ``outd`` (out of distribution: no split), ``camo``, ``pbg``,
``vbg``, ``grassbg``. The given directory is the variant folder itself or its parent (the
reference loader's rule: it appends ``clevrtex_<variant>`` unless the path already ends so).
Scene numbers must run 0..N-1 without gaps or duplicates.

Splits, the benchmark's (``CLEVRTEX.splits``), by fractions of the N scenes in number order:
``test`` = [0, int(0.1 N)), ``val`` = [int(0.1 N), int(0.2 N)), ``train`` = [int(0.2 N), N);
``outd`` is not split (its ``test`` and ``all`` are every scene).

Crop, the reference loader's: a centred square of int(0.8 * min(H, W)) pixels, for 240x320 rows
24:216 and cols 64:256 (192x192), then the resize to ``INPUT.IMAGE_SIZE`` by its protocol (the
benchmark uses 128: PIL bilinear for images, nearest for labels) unless ``INPUT.RESIZE`` is set.
"""

from __future__ import annotations

import json
import logging
import os
import re

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from lib.data.datasets.base import ItemFormat, decode_image, read_label_map
from lib.errors import DatasetError, MissingDatasetError

logger = logging.getLogger(__name__)

VARIANTS = ("full", "outd", "camo", "pbg", "vbg", "grassbg")
SPLITS = ("train", "val", "test", "all")
# The benchmark's split fractions [start, stop) of the scenes in number order.
SPLIT_FRACTIONS = {"test": (0.0, 0.1), "val": (0.1, 0.2), "train": (0.2, 1.0), "all": (0.0, 1.0)}
CROP_FRACTION = 0.8
MASK_MODES = ("L", "P", "I", "I;16")


class ClevrTexError(DatasetError):
    """A ClevrTex folder that does not have the benchmark's layout."""


def clevrtex_crop(height: int, width: int) -> tuple[int, int, int, int]:
    """The reference loader's centre crop of a height x width frame, side int(0.8 * min(H, W)):
    ``(row0, row1, col0, col1)``; 240x320 gives (24, 216, 64, 256)."""
    side = int(CROP_FRACTION * float(min(height, width)))
    # PIL box ((W - c) // 2, (H - c) // 2, (W + c) // 2, (H + c) // 2) in the reference code.
    return (height - side) // 2, (height + side) // 2, (width - side) // 2, (width + side) // 2


def split_range(split: str, n: int) -> tuple[int, int]:
    """The benchmark's [start, stop) of a split (``SPLIT_FRACTIONS``) of n scenes."""
    lo, hi = SPLIT_FRACTIONS[split]
    return int(lo * n), int(hi * n)


def _variant_dir(path: str, variant: str) -> str:
    sub = f"clevrtex_{variant}"
    return path if os.path.basename(os.path.normpath(path)) == sub else os.path.join(path, sub)


def detect_variant(path: str) -> str:
    """The variant the folder of ``clevrtex:<dir>`` names: ``clevrtex_<variant>`` as its last
    component, else ``full``."""
    base = os.path.basename(os.path.normpath(path)).lower()
    if base.startswith("clevrtex_") and base[len("clevrtex_") :] in VARIANTS:
        return base[len("clevrtex_") :]
    return "full"


class ClevrTexDataset(Dataset):
    """One split of one ClevrTex variant; see the module docstring for layout and rules.

    Args:
        cfg: the config (``INPUT.IMAGE_SIZE``, ``INPUT.RESIZE``, ``DATASETS.MAX_OBJECTS``).
        is_train: picks the default split: ``train`` for training, ``test`` for evaluation.
        path: the variant folder ``.../clevrtex_<variant>`` or its parent.
        variant: one of ``VARIANTS``; None = from the path's last component, else ``full``.
        split: ``train``, ``val``, ``test`` or ``all``; None = the default above.

    Items are ``(image float32 (3, S, S) in [0, 1], mask int64 (S, S) label map)``.

    Attributes:
        files, mask_files: image and label-map paths of the split, in scene order.
        scene_numbers: the scenes' numbers (their index in the benchmark).
        has_masks: True.
        provenance: source, path, variant, split, split range and counts.
        factor_mapping: None (``return_factors`` not supported; ``metadata(index)`` reads a
            scene's JSON).

    Raises:
        MissingDatasetError: no such folder, no scene of the variant, a missing label map.
        ClevrTexError: an unknown variant or split, a gap or duplicate in the scene numbers, an
            ``outd`` train/val split, an empty split.
    """

    def __init__(
        self,
        cfg,
        is_train: bool,
        path: str,
        variant: str | None = None,
        split: str | None = None,
    ):
        self.variant = variant if variant is not None else detect_variant(path)
        if self.variant not in VARIANTS:
            raise ClevrTexError(
                f"clevrtex {path}: variant must be one of {VARIANTS}, got {variant!r}"
            )
        self.split = split if split is not None else ("train" if is_train else "test")
        if self.split not in SPLITS:
            raise ClevrTexError(f"clevrtex {path}: split must be one of {SPLITS}, got {split!r}")
        if self.variant == "outd" and self.split in ("train", "val"):
            raise ClevrTexError(
                f"clevrtex {path}: the outd variant is a test set with no split; use "
                "clevrtex:<dir>:outd (or :outd:test / :outd:all)"
            )
        if not os.path.isdir(path):
            hint = (
                f"; options after the folder are a variant {VARIANTS} and a split {SPLITS}"
                if ":" in os.path.basename(path)
                else ""
            )
            raise MissingDatasetError(f"clevrtex dataset {path}: no such folder{hint}")
        self.root = _variant_dir(path, self.variant)
        if not os.path.isdir(self.root):
            raise MissingDatasetError(
                f"clevrtex dataset {path}: no folder {self.root} (variant {self.variant!r}); give "
                "the clevrtex_<variant> folder or its parent"
            )
        images, masks = self._index_scenes()
        n = len(images)
        start, stop = (0, n) if self.variant == "outd" else split_range(self.split, n)
        if stop <= start:
            raise ClevrTexError(
                f"clevrtex {self.root}: split {self.split!r} of {n} scenes is empty"
            )
        self.scene_numbers = list(range(start, stop))
        self.files = images[start:stop]
        self.mask_files = masks[start:stop]
        with Image.open(self.files[0]) as im:
            width, height = im.size
        self.crop = clevrtex_crop(height, width)
        self.has_masks, self.factor_mapping, self.return_factors = True, None, False
        self.format = ItemFormat.from_cfg(cfg, is_train, "clevrtex")
        rule = (
            "outd: every scene (no split)"
            if self.variant == "outd"
            else f"benchmark fractions {SPLIT_FRACTIONS[self.split]} of {n} scenes"
        )
        self.provenance = {
            "source": "clevrtex",
            "path": os.path.abspath(self.root),
            "variant": self.variant,
            "split": self.split,
            "split_rule": rule,
            "split_range": [start, stop],
            "num_examples": stop - start,
            "variant_scenes": n,
            "crop": list(self.crop),
            "has_masks": True,
            **self.format.describe(not cfg.INPUT.RESIZE),
        }
        logger.info(
            "clevrtex %s (%s split): scenes [%d, %d) of %d from %s; resize %s",
            *(self.variant, self.split, start, stop, n, self.root, self.format.resize),
        )

    def _index_scenes(self) -> tuple[list[str], list[str]]:
        """Image and label-map paths by scene number 0..N-1 (every subfolder searched)."""
        pattern = re.compile(rf"^CLEVRTEX_{re.escape(self.variant)}_(\d{{6}})\.png$")
        found: dict[int, str] = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            for name in filenames:
                match = pattern.match(name)
                if match is None:
                    continue
                number = int(match.group(1))
                if number in found:
                    raise ClevrTexError(
                        f"clevrtex {self.root}: scene {number} twice: {found[number]} and "
                        f"{os.path.join(dirpath, name)}"
                    )
                found[number] = os.path.join(dirpath, name)
        if not found:
            raise MissingDatasetError(
                f"clevrtex dataset {self.root}: no CLEVRTEX_{self.variant}_NNNNNN.png image in it"
            )
        n = max(found) + 1
        missing = [i for i in range(n) if i not in found]
        if missing:
            raise ClevrTexError(
                f"clevrtex {self.root}: scene numbers must run 0..{n - 1}; missing "
                f"{missing[:10]}{' ...' if len(missing) > 10 else ''}"
            )
        images = [found[i] for i in range(n)]
        masks = [f[: -len(".png")] + "_flat.png" for f in images]
        for image, mask in zip(images, masks):
            if not os.path.isfile(mask):
                raise MissingDatasetError(
                    f"clevrtex {self.root}: image {image} has no label map {mask}"
                )
        return images, masks

    def __len__(self) -> int:
        return len(self.files)

    def load_arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The scene as stored: image uint8 (H, W, 3), label map int64 (H, W)."""
        image_file, mask_file = self.files[index], self.mask_files[index]
        im = decode_image(image_file)
        # The reference loader keeps the first three channels of the (RGBA) PNG.
        image = np.array(im)[..., :3] if im.mode in ("RGB", "RGBA") else np.array(im.convert("RGB"))
        return image, read_label_map(mask_file, MASK_MODES, image, image_file).astype(np.int64)

    def metadata(self, index: int) -> dict:
        """The scene's JSON (``objects``, ``ground_material``, ...).

        Args:
            index: position in this split.

        Raises:
            FileNotFoundError: the scene has no JSON file.
        """
        path = self.files[index][: -len(".png")] + ".json"
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.load_arrays(index)
        return self.format(
            image, mask, clevrtex_crop(*image.shape[:2]), where=self.mask_files[index]
        )
