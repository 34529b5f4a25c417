"""``hdf5:<file>`` datasets: the HDF5 files researchers already use for multi_object_datasets.

Two layouts, detected from the file's keys (data/README.md has the details and sources):
``ocl``, the object-centric library (Dittadi et al. 2022): ``image`` (N, H, W, 3), ``mask``
(N, H, W[, 1]) label maps, splits = consecutive runs of the (filtered) examples, train first
(``OCL_SPLIT_SIZES``); ``emorl``, EfficientMORL (Emami et al. 2021): ``<split>/imgs`` (N, H, W,
3), optional ``<split>/masks`` (N, K, H, W, 1) per entity (label map = their argmax).

Frames of 240x320 get the official CLEVR crop, others the centre square. Pixels: integers
0..255, or floats in [0, 1] or [0, 255] (detected from the first images); NaN or infinite
values are refused. h5py handles cannot be pickled and are not fork-safe: the file is opened
lazily in the reading process.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from torch.utils.data import Dataset

from lib.data.datasets.base import ItemFormat, checked_uint8, detect_scale
from lib.data.format import CLEVR_CROP
from lib.errors import DatasetError, MissingDatasetError

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "all")
EMORL_SPLITS = ("train", "val", "test")
# ``<name>`` of ``<name>-full.hdf5`` -> (train, val, test) sizes, the library's data_sizes.
OCL_SPLIT_SIZES: dict[str, tuple[int, int, int]] = {
    "clevr_10": (90000, 5000, 5000),
    "clevrtex": (40000, 5000, 5000),
    "multidsprites_colored_on_grayscale": (90000, 5000, 5000),
    "objects_room_train": (90000, 5000, 5000),
    "shapestacks": (90000, 5000, 5000),
    "tetrominoes": (90000, 5000, 5000),
}
# The library's variants.yaml entries that select examples: name -> (file they are defined
# on, largest num_actual_objects kept, (train, val, test) sizes).
OCL_VARIANTS: dict[str, tuple[str, int, tuple[int, int, int]]] = {
    "clevr6": ("clevr_10", 6, (49483, 2000, 2000)),
}
CLEVR_FRAME = (240, 320)  # (H, W) of frames that get the official CLEVR crop


class Hdf5FormatError(DatasetError):
    """An HDF5 file without the expected keys or with arrays of the wrong shape or dtype."""


def _array(handle, key: str, path: str, rgb: bool = False):
    """The h5py dataset ``key`` ((N, H, W, 3) with ``rgb``), or an error naming it."""
    if key not in handle:
        parent = key.rsplit("/", 1)[0] if "/" in key else ""
        found = sorted(handle[parent].keys()) if parent in handle else sorted(handle)
        raise Hdf5FormatError(f"{path}: key {key!r} is missing (found {found})")
    value = handle[key]
    if not hasattr(value, "shape"):
        raise Hdf5FormatError(f"{path}: key {key!r} is a group, expected a dataset (an array)")
    if rgb and (value.ndim != 4 or value.shape[3] != 3):
        raise Hdf5FormatError(
            f"{path}: key {key!r} has shape {tuple(value.shape)}, expected (N, H, W, 3) RGB "
            "frames, channels last"
        )
    return value


def _split_sizes(path: str, name: str, sizes, available: int) -> tuple[int, int, int]:
    """The (train, val, test) sizes of an object-centric library file, checked."""
    sizes = sizes if sizes is not None else OCL_SPLIT_SIZES.get(name)
    if sizes is None:
        raise Hdf5FormatError(
            f"{path}: no default split sizes for {name!r} (known: {sorted(OCL_SPLIT_SIZES)}"
            "); give them in the name, hdf5:<file>:sizes=TRAIN,VAL,TEST, or read it all "
            "with hdf5:<file>:all"
        )
    if sum(sizes) > available:
        raise Hdf5FormatError(
            f"{path}: the train/val/test sizes {tuple(sizes)} need {sum(sizes)} examples but "
            f"only {available} are available"
        )
    return tuple(sizes)


class Hdf5Dataset(Dataset):
    """One split of an HDF5 file in the object-centric library's or EfficientMORL's layout.

    Args:
        cfg: the config (``INPUT``, ``DATASETS.MAX_OBJECTS``, ``TEST.NATIVE_LABELS``).
        is_train: picks the default split: ``train`` for training, ``test`` for evaluation.
        path: the ``.hdf5`` / ``.h5`` file.
        split: ``train``, ``val``, ``test`` or (object-centric library only) ``all``; None =
            the default above.
        variant: object-centric library only: ``clevr6`` (``OCL_VARIANTS``), or None.
        sizes: object-centric library only: (train, val, test) sizes replacing the library's.
        layout: ``"ocl"``, ``"emorl"``, or None to detect it.

    Items are ``(image float32 (3, S, S) in [0, 1], mask int64 (S, S) label map or None)``.

    Attributes:
        indices: int64 (n,) the split's example indices in the file (or its group).
        has_masks: whether items carry label maps (EfficientMORL groups without ``masks``: no).
        provenance: source, path, layout, split, variant, split rule, counts, pixel scale, resize.
        factor_mapping: None (``factors(index)`` returns the stored arrays).

    Raises:
        MissingDatasetError: no such file.
        Hdf5FormatError: an unknown layout, split or variant, a missing key, a wrong shape or
            dtype, a split larger than the file (the message names the file and the key).
    """

    def __init__(
        self,
        cfg,
        is_train: bool,
        path: str,
        split: str | None = None,
        variant: str | None = None,
        sizes: tuple[int, int, int] | None = None,
        layout: str | None = None,
    ):
        self.path = path
        self.split = split or ("train" if is_train else "test")
        if self.split not in SPLITS:
            raise Hdf5FormatError(f"{path}: split must be one of {SPLITS}, got {self.split!r}")
        if not os.path.isfile(path):
            hint = ""
            if ":" in os.path.basename(path):
                hint = "; options after the file are train, val, test, all, clevr6, ocl, emorl"
            raise MissingDatasetError(f"hdf5 dataset {path}: no such file{hint}")
        import h5py

        self.factor_mapping, self.return_factors = None, False
        self._h5, self._pid = None, None
        try:
            handle = h5py.File(path, "r")
        except OSError as exc:
            raise Hdf5FormatError(f"{path}: cannot open it as an HDF5 file ({exc})") from exc
        with handle:
            self.layout = layout or self._detect_layout(handle)
            if self.layout == "ocl":
                rule = self._init_ocl(handle, variant, sizes)
            elif variant is not None or sizes is not None:
                raise Hdf5FormatError(
                    f"{path}: EfficientMORL files have their splits as groups; variant and "
                    "sizes apply only to the object-centric library's layout"
                )
            else:
                rule = self._init_emorl(handle)
            images = handle[self._image_key]
            self._scale, scale_text = detect_scale(images[: min(8, len(images))], path)
        if len(self.indices) == 0:
            raise Hdf5FormatError(f"{path}: split {self.split!r} is empty")
        self.format = ItemFormat.from_cfg(cfg, is_train, self.layout)
        self.provenance = {
            "source": "hdf5",
            "path": os.path.abspath(path),
            "layout": self.layout,
            "split": self.split,
            "variant": variant,
            "split_rule": rule,
            "num_examples": len(self.indices),
            "file_examples": self._file_examples,
            "has_masks": self.has_masks,
            "pixels": f"{self._image_key}: {scale_text}",
            **self.format.describe(not cfg.INPUT.RESIZE),
        }
        logger.info(
            "hdf5 dataset %s (%s layout, %s split): %d of %d examples; %s; pixels %s; resize %s",
            *(path, self.layout, self.split, len(self.indices), self._file_examples, rule),
            *(scale_text, self.format.resize),
        )

    def _detect_layout(self, handle) -> str:
        if "image" in handle or "mask" in handle:
            return "ocl"
        if any(s in handle and "imgs" in handle[s] for s in EMORL_SPLITS):
            return "emorl"
        raise Hdf5FormatError(
            f"{self.path}: not a known HDF5 dataset layout: expected datasets 'image' and "
            "'mask' (object-centric library, <name>-full.hdf5) or groups 'train'/'val'/'test' "
            f"with 'imgs' (EfficientMORL); the file has keys {sorted(handle.keys())}"
        )

    def _init_ocl(self, handle, variant: str | None, sizes) -> str:
        """Check an object-centric library file and select the split; returns the rule."""
        path = self.path
        self._image_key, self._mask_key = "image", "mask"
        n, h, w = _array(handle, "image", path, rgb=True).shape[:3]
        mask = _array(handle, "mask", path)
        if tuple(mask.shape) not in ((n, h, w), (n, h, w, 1)) or mask.dtype.kind not in "ui":
            raise Hdf5FormatError(
                f"{path}: key 'mask' has shape {tuple(mask.shape)} and dtype {mask.dtype}, "
                f"expected ({n}, {h}, {w}, 1) or ({n}, {h}, {w}) integers: a label map per image"
            )
        self._frame, self._file_examples, self.has_masks = (h, w), n, True
        # Per-object and per-example arrays for ``factors``: every other key with N rows.
        self._factor_keys = sorted(
            k
            for k in handle
            if k not in ("image", "mask") and getattr(handle[k], "shape", (0,))[:1] == (n,)
        )
        name = os.path.splitext(os.path.basename(path))[0].split("-")[0]
        rule = f"consecutive train/val/test runs of {os.path.basename(path)}"
        keep = np.ones(n, dtype=bool)
        if variant is not None:
            if variant not in OCL_VARIANTS:
                raise Hdf5FormatError(f"{path}: unknown variant {variant!r}; known: {OCL_VARIANTS}")
            base, max_objects, variant_sizes = OCL_VARIANTS[variant]
            if name != base:
                logger.warning("%s: variant %r is defined on %s-full.hdf5", path, variant, base)
            count = _array(handle, "num_actual_objects", path)
            if count.shape not in ((n,), (n, 1)):
                raise Hdf5FormatError(
                    f"{path}: key 'num_actual_objects' has shape {tuple(count.shape)}, "
                    f"expected ({n}, 1) or ({n},)"
                )
            keep = np.asarray(count[()]).reshape(n) <= max_objects
            sizes = sizes if sizes is not None else variant_sizes
            rule += f" after num_actual_objects <= {max_objects} ({int(keep.sum())} of {n} kept)"
        positions = np.flatnonzero(keep).astype(np.int64)
        if self.split == "all":
            self.indices = positions
            return rule + "; all of them"
        sizes = _split_sizes(path, name, sizes, len(positions))
        start = {"train": 0, "val": sizes[0], "test": sizes[0] + sizes[1]}[self.split]
        stop = start + sizes[EMORL_SPLITS.index(self.split)]
        self.indices = positions[start:stop]
        return rule + f", sizes {sizes}: {self.split} = positions [{start}, {stop})"

    def _init_emorl(self, handle) -> str:
        """Check an EfficientMORL group and select it; returns the rule."""
        path, split = self.path, self.split
        if split == "all" or split not in handle:
            raise Hdf5FormatError(
                f"{path}: group {split!r} is missing (EfficientMORL keeps each split in a group; "
                f"the file has {sorted(handle)}): name one, hdf5:<file>:<split>"
            )
        self._image_key = f"{split}/imgs"
        n, h, w = _array(handle, self._image_key, path, rgb=True).shape[:3]
        self._mask_key = f"{split}/masks" if "masks" in handle[split] else None
        if self._mask_key is None:
            logger.warning("%s has no '%s/masks': images only, no ARI on it", path, split)
        else:
            shape = tuple(_array(handle, self._mask_key, path).shape)
            if shape[:1] + shape[2:4] != (n, h, w) or shape[4:] not in ((), (1,)):
                raise Hdf5FormatError(
                    f"{path}: key '{self._mask_key}' has shape {shape}, expected ({n}, K, {h}, "
                    f"{w}, 1): one mask per entity, entity 0 the background"
                )
        self._factor_keys = [f"{split}/factors"] if "factors" in handle[split] else []
        for key in self._factor_keys:
            if _array(handle, key, path).shape[0] != n:
                raise Hdf5FormatError(f"{path}: key '{key}' does not have {n} rows")
        self._frame, self._file_examples = (h, w), n
        self.has_masks = self._mask_key is not None
        self.indices = np.arange(n, dtype=np.int64)
        return f"EfficientMORL group {split!r} of {os.path.basename(path)}, in order"

    def _file(self):
        # A handle inherited through fork belongs to the parent: drop it unused (closing it
        # could disturb the parent) and open the file in this process.
        if self._h5 is None or self._pid != os.getpid():
            import h5py

            self._h5, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._h5

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_h5": None, "_pid": None}

    def close(self) -> None:
        """Close this process's handle (reading reopens it)."""
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = None

    def __len__(self) -> int:
        return len(self.indices)

    def _index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        return int(self.indices[index])

    def load_arrays(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The example as stored: image uint8 (H, W, 3), label map int64 (H, W) or None.

        Raises:
            DatasetError: non-finite or out-of-range pixels, negative labels.
        """
        i = self._index(index)
        handle = self._file()
        where = f"{self.path} key '{self._image_key}' example {i}"
        image = checked_uint8(np.asarray(handle[self._image_key][i]), self._scale, where)
        if self._mask_key is None:
            return image, None
        stored = np.asarray(handle[self._mask_key][i])
        if self.layout == "ocl":
            label = stored.reshape(self._frame).astype(np.int64)
            if label.min() < 0:
                raise Hdf5FormatError(f"{self.path} key 'mask' example {i}: negative labels")
            return image, label
        # (K, H, W[, 1]) entity masks -> the entity of largest value (all-zero pixels: 0).
        return image, np.argmax(stored.reshape(stored.shape[0], *self._frame), axis=0)

    def factors(self, index: int) -> dict[str, np.ndarray]:
        """Stored factors of an example: every other top-level key with one row per example
        (object-centric library), or ``<split>/factors`` (EfficientMORL)."""
        i, handle = self._index(index), self._file()
        return {key.rsplit("/", 1)[-1]: np.asarray(handle[key][i]) for key in self._factor_keys}

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        image, mask = self.load_arrays(index)
        crop = CLEVR_CROP if self._frame == CLEVR_FRAME else None
        return self.format(image, mask, crop, where=f"{self.path} example {self._index(index)}")
