"""``hdf5:<file>`` datasets: the HDF5 files researchers already use for multi_object_datasets.

Two layouts, detected from the file's keys:

``ocl``: the object-centric library (Dittadi et al. 2022, github addtt/object-centric-library),
one file per dataset, ``<name>-full.hdf5`` (with ``<name>-metadata.npy`` beside it, not needed
here), every example in one array per feature::

    image               uint8 (N, H, W, 3)
    mask                integer (N, H, W, 1) or (N, H, W): label map, entity index per pixel
    num_actual_objects  (N, 1) or (N,)          needed only by the ``clevr6`` variant
    visibility, x, ...  per-object factors (N, K, ...), returned by ``factors``

  Splits are consecutive runs of the (filtered) examples, train first, as the library's
  ``make_dataloaders`` takes them (starting index 0, then ``data_sizes`` = train, val, test
  from ``config/dataset/<dataset>.yaml``; evaluation reads the test run after train + val):
  90,000 / 5,000 / 5,000 for clevr_10, multidsprites_colored_on_grayscale, objects_room_train,
  shapestacks and tetrominoes; 40,000 / 5,000 / 5,000 for clevrtex. The ``clevr6`` variant
  (``config/dataset/variants/variants.yaml``) keeps the examples with num_actual_objects <= 6
  (53,483 of the 100,000) and splits them 49,483 / 2,000 / 2,000.

``emorl``: EfficientMORL (Emami et al. 2021, github pemami4911/EfficientMORL, ``lib/datasets.
py``), one group per split, usually one split per file (``clevr6_with_masks_train.h5``,
``clevr6_with_masks_and_factors_test.h5``, ...)::

    <split>/imgs     (N, H, W, 3), values 0..255
    <split>/masks    (N, K, H, W, 1), 0 or 255 per entity (optional: training files may omit it)
    <split>/factors  (N, K, F) per-object factors, last column = presence (optional)

  with ``<split>`` one of ``train``, ``val``, ``test``. The label map is the argmax over the K
  entity masks, entity 0 being the background, as for the official TFRecords.

Frames of 240x320 (EfficientMORL's CLEVR files keep the raw frames) get the official CLEVR crop
(rows 29:221, cols 64:256, EfficientMORL's own ``crop((64, 29, 256, 221))``); others the centre
square crop; then the resize to ``INPUT.IMAGE_SIZE``. Labels are kept as stored, so label 0 is
the background (objects_room's HDF5 file has four background entities, 0..3: only 0 counts as
background here; see data/README.md).

The file is opened lazily in each process (h5py handles cannot be pickled and are not
fork-safe): construction validates and closes it, ``__getitem__`` opens it on first use in the
process that reads, and ``__getstate__`` drops the handle.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from torch.utils.data import Dataset

from lib.data.datasets.base import check_max_objects, to_model_input
from lib.data.format import CLEVR_CROP
from lib.errors import DatasetError

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "all")
EMORL_SPLITS = ("train", "val", "test")
# ``<name>`` of ``<name>-full.hdf5`` -> (train, val, test) sizes, the ``data_sizes`` of the
# object-centric library's config/dataset/*.yaml.
OCL_SPLIT_SIZES: dict[str, tuple[int, int, int]] = {
    "clevr_10": (90000, 5000, 5000),
    "clevrtex": (40000, 5000, 5000),
    "multidsprites_colored_on_grayscale": (90000, 5000, 5000),
    "objects_room_train": (90000, 5000, 5000),
    "shapestacks": (90000, 5000, 5000),
    "tetrominoes": (90000, 5000, 5000),
}
# Variants of the library's variants.yaml that select examples: name -> (file name it is
# defined on, largest num_actual_objects kept, (train, val, test) sizes).
OCL_VARIANTS: dict[str, tuple[str, int, tuple[int, int, int]]] = {
    "clevr6": ("clevr_10", 6, (49483, 2000, 2000)),
}
# (H, W) of frames that get the official CLEVR crop instead of the centre square.
CLEVR_FRAME = (240, 320)


class Hdf5FormatError(DatasetError):
    """An HDF5 file without the expected keys or with arrays of the wrong shape or dtype."""


def _h5py():
    try:
        import h5py
    except ImportError as exc:  # pragma: no cover - h5py is a requirement
        raise ImportError("hdf5: datasets need h5py (pip install 'h5py>=3')") from exc
    return h5py


def detect_layout(handle, path: str) -> str:
    """Which layout an open HDF5 file has.

    Args:
        handle: an open ``h5py.File``.
        path: the file, for the message.

    Returns:
        ``"ocl"`` (top-level ``image`` and ``mask``) or ``"emorl"`` (``<split>/imgs``).

    Raises:
        Hdf5FormatError: neither layout (the message lists the keys found).
    """
    keys = sorted(handle.keys())
    if "image" in handle or "mask" in handle:
        return "ocl"
    if any(s in handle and "imgs" in handle[s] for s in EMORL_SPLITS):
        return "emorl"
    raise Hdf5FormatError(
        f"{path}: not a known HDF5 dataset layout: expected datasets 'image' and 'mask' "
        "(object-centric library, <name>-full.hdf5) or groups 'train'/'val'/'test' with "
        f"'imgs' (EfficientMORL); the file has keys {keys}"
    )


def _array(handle, key: str, path: str):
    """The h5py dataset ``key``, or a Hdf5FormatError naming the file and the key."""
    if key not in handle:
        parent = key.rsplit("/", 1)[0] if "/" in key else None
        found = sorted(handle[parent].keys()) if parent and parent in handle else sorted(handle)
        raise Hdf5FormatError(f"{path}: key {key!r} is missing (found {found})")
    value = handle[key]
    if not hasattr(value, "shape"):
        raise Hdf5FormatError(f"{path}: key {key!r} is a group, expected a dataset (an array)")
    return value


def _check_image_array(array, key: str, path: str) -> None:
    if len(array.shape) != 4 or array.shape[3] != 3:
        raise Hdf5FormatError(
            f"{path}: key {key!r} has shape {tuple(array.shape)}, expected (N, H, W, 3) RGB "
            "frames, channels last"
        )
    if array.dtype.kind not in "uif":
        raise Hdf5FormatError(f"{path}: key {key!r} has dtype {array.dtype}, expected uint8")


def _ocl_frames(handle, path: str) -> tuple[int, int, int]:
    """Check the ``image`` and ``mask`` arrays of an object-centric library file.

    Args:
        handle: the open ``h5py.File``.
        path: the file, for the messages.

    Returns:
        ``(N, H, W)`` of the frames.

    Raises:
        Hdf5FormatError: a missing key, images not (N, H, W, 3), or a mask that is not one
            integer label map per image.
    """
    image = _array(handle, "image", path)
    mask = _array(handle, "mask", path)
    _check_image_array(image, "image", path)
    n, h, w = image.shape[:3]
    if (
        tuple(mask.shape[:3]) != (n, h, w)
        or mask.ndim not in (3, 4)
        or (mask.ndim == 4 and mask.shape[3] != 1)
    ):
        raise Hdf5FormatError(
            f"{path}: key 'mask' has shape {tuple(mask.shape)}, expected ({n}, {h}, {w}, 1) "
            f"or ({n}, {h}, {w}): one label map per image"
        )
    if mask.dtype.kind not in "ui":
        raise Hdf5FormatError(
            f"{path}: key 'mask' has dtype {mask.dtype}, expected an integer label map"
        )
    return n, h, w


def _ocl_variant_keep(
    handle, path: str, name: str, n: int, variant: str
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The examples a variant of ``OCL_VARIANTS`` keeps, and its split sizes.

    Args:
        handle: the open ``h5py.File``.
        path: the file, for the messages.
        name: ``<name>`` of ``<name>-full.hdf5`` (a different one than the variant's only
            warns: a renamed file is still usable).
        n: examples in the file.
        variant: the variant name.

    Returns:
        ``(keep, sizes)``: bool (n,) ``num_actual_objects <= max``, and the variant's
        (train, val, test) sizes.

    Raises:
        Hdf5FormatError: an unknown variant, or ``num_actual_objects`` missing or not (n,) /
            (n, 1).
    """
    if variant not in OCL_VARIANTS:
        raise Hdf5FormatError(f"{path}: unknown variant {variant!r}; known: {sorted(OCL_VARIANTS)}")
    base, max_objects, variant_sizes = OCL_VARIANTS[variant]
    if name != base:
        logger.warning(
            "%s: variant %r is defined on %s-full.hdf5, this file is named %r",
            path,
            variant,
            base,
            name,
        )
    count = _array(handle, "num_actual_objects", path)
    if count.shape not in ((n,), (n, 1)):
        raise Hdf5FormatError(
            f"{path}: key 'num_actual_objects' has shape {tuple(count.shape)}, "
            f"expected ({n}, 1) or ({n},)"
        )
    return np.asarray(count[()]).reshape(n) <= max_objects, variant_sizes


def _ocl_split_sizes(
    path: str, name: str, sizes: tuple[int, int, int] | None, available: int
) -> tuple[int, int, int]:
    """The (train, val, test) sizes of an object-centric library file, checked.

    Args:
        path: the file, for the messages.
        name: ``<name>`` of ``<name>-full.hdf5``, for the library's defaults.
        sizes: given sizes, or None for ``OCL_SPLIT_SIZES[name]``.
        available: examples left after a variant's filter.

    Returns:
        Three ints.

    Raises:
        Hdf5FormatError: no default for ``name``, not three counts >= 0, or more examples
            than ``available``.
    """
    if sizes is None:
        sizes = OCL_SPLIT_SIZES.get(name)
    if sizes is None:
        raise Hdf5FormatError(
            f"{path}: no default split sizes for {name!r} (known: {sorted(OCL_SPLIT_SIZES)}"
            "); give them in the name, hdf5:<file>:sizes=TRAIN,VAL,TEST, or read it all "
            "with hdf5:<file>:all"
        )
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) != 3 or min(sizes) < 0:
        raise Hdf5FormatError(f"{path}: sizes must be three counts >= 0, got {sizes}")
    if sum(sizes) > available:
        raise Hdf5FormatError(
            f"{path}: the train/val/test sizes {sizes} need {sum(sizes)} examples but only "
            f"{available} are available"
        )
    return sizes


def _as_uint8(image: np.ndarray, where: str) -> np.ndarray:
    """uint8 (H, W, 3) from stored values 0..255 (EfficientMORL may store other dtypes)."""
    if image.dtype == np.uint8:
        return image
    if image.size and (image.min() < 0 or image.max() > 255):
        raise Hdf5FormatError(f"{where}: image values outside 0..255")
    return np.rint(image).astype(np.uint8)


class Hdf5Dataset(Dataset):
    """One split of an HDF5 file in the object-centric library's or EfficientMORL's layout.

    Args:
        cfg: the config (``INPUT.IMAGE_SIZE``, ``INPUT.RESIZE``, ``DATASETS.MAX_OBJECTS``).
        is_train: picks the default split: ``train`` for training, ``test`` for evaluation.
        path: the ``.hdf5`` / ``.h5`` file.
        split: ``train``, ``val``, ``test`` or (object-centric library only) ``all``; None =
            the default above.
        variant: object-centric library only: ``clevr6`` (num_actual_objects <= 6, splits
            49,483 / 2,000 / 2,000), or None.
        sizes: object-centric library only: (train, val, test) sizes replacing the library's
            defaults (needed for a file whose ``<name>`` is not in ``OCL_SPLIT_SIZES``).
        layout: ``"ocl"``, ``"emorl"``, or None to detect it.

    Items are ``(image float32 (3, S, S) in [0, 1], mask int64 (S, S) label map or None)``, S =
    ``INPUT.IMAGE_SIZE``.

    Attributes:
        layout: ``"ocl"`` or ``"emorl"``.
        split: the split read.
        indices: int64 (n,) the split's example indices in the file (EfficientMORL: in its group).
        has_masks: whether items carry label maps (EfficientMORL files without ``masks``: no).
        provenance: source, path, layout, split, variant, split rule and counts.
        factor_mapping: None (no released factor regressor for these files; ``return_factors``
            is not supported, ``factors(index)`` returns the stored per-object arrays).

    Raises:
        FileNotFoundError: no such file.
        Hdf5FormatError: an unknown layout, a missing key, a wrong shape or dtype, an unknown
            split or variant, or a split larger than the file (the message names file and key).
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
        self.size = int(cfg.INPUT.IMAGE_SIZE)
        self.resize = str(cfg.INPUT.RESIZE)
        self.max_objects = int(cfg.DATASETS.MAX_OBJECTS)
        self.split = split if split is not None else ("train" if is_train else "test")
        if self.split not in SPLITS:
            raise Hdf5FormatError(f"{path}: split must be one of {SPLITS}, got {self.split!r}")
        if not os.path.isfile(path):
            hint = (
                "; options after the file are train, val, test, all, clevr6, ocl, emorl and "
                "sizes=TRAIN,VAL,TEST"
                if ":" in os.path.basename(path)
                else ""
            )
            raise FileNotFoundError(f"hdf5 dataset {path}: no such file{hint}")
        h5py = _h5py()
        self.factor_mapping = None
        self.return_factors = False
        self._h5 = None
        self._pid: int | None = None
        try:
            handle = h5py.File(path, "r")
        except OSError as exc:
            raise Hdf5FormatError(f"{path}: cannot open it as an HDF5 file ({exc})") from exc
        with handle:
            self.layout = layout or detect_layout(handle, path)
            if self.layout == "ocl":
                rule = self._init_ocl(handle, variant, sizes)
            elif self.layout == "emorl":
                if variant is not None or sizes is not None:
                    raise Hdf5FormatError(
                        f"{path}: EfficientMORL files have their splits as groups; variant and "
                        "sizes apply only to the object-centric library's layout"
                    )
                rule = self._init_emorl(handle)
            else:
                raise Hdf5FormatError(f"{path}: unknown layout {self.layout!r}")
        if len(self.indices) == 0:
            raise Hdf5FormatError(f"{path}: split {self.split!r} is empty")
        self.variant = variant
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
        }
        if self.layout == "ocl":
            self.provenance["metadata_file_present"] = os.path.isfile(self._metadata_file())
        logger.info(
            "hdf5 dataset %s (%s layout, %s split): %d of %d examples; %s",
            path,
            self.layout,
            self.split,
            len(self.indices),
            self._file_examples,
            rule,
        )

    # -- construction ---------------------------------------------------------------------

    def _metadata_file(self) -> str:
        # The library's rule: <dir>/<stem up to the first '-'>-metadata.npy.
        stem = os.path.splitext(os.path.basename(self.path))[0]
        return os.path.join(os.path.dirname(self.path), f"{stem.split('-')[0]}-metadata.npy")

    def _init_ocl(self, handle, variant: str | None, sizes: tuple[int, int, int] | None) -> str:
        """Check an object-centric library file and select the split's examples.

        Args:
            handle: the open ``h5py.File``.
            variant: ``clevr6`` or None (see ``OCL_VARIANTS``).
            sizes: (train, val, test) sizes, or None for the variant's or the library's.

        Returns:
            The split rule, in words, for the provenance.

        Raises:
            Hdf5FormatError: bad ``image``/``mask`` arrays, an unknown variant, no or bad
                split sizes, or sizes larger than the (filtered) file.
        """
        path = self.path
        n, h, w = _ocl_frames(handle, path)
        self._image_key, self._mask_key = "image", "mask"
        self._frame = (h, w)
        self._file_examples = n
        self.has_masks = True
        # Per-object and per-example arrays for ``factors``: every other key with N rows.
        self._factor_keys = sorted(
            k
            for k in handle
            if k not in ("image", "mask")
            and hasattr(handle[k], "shape")
            and len(handle[k].shape) >= 1
            and handle[k].shape[0] == n
        )
        name = os.path.splitext(os.path.basename(path))[0].split("-")[0]
        rule = f"consecutive train/val/test runs of {os.path.basename(path)}"
        keep = np.ones(n, dtype=bool)
        if variant is not None:
            keep, variant_sizes = _ocl_variant_keep(handle, path, name, n, variant)
            sizes = sizes if sizes is not None else variant_sizes
            max_objects = OCL_VARIANTS[variant][1]
            rule += f" after num_actual_objects <= {max_objects} ({int(keep.sum())} of {n} kept)"
        positions = np.flatnonzero(keep).astype(np.int64)
        if self.split == "all":
            self.indices = positions
            return rule + "; all of them"
        sizes = _ocl_split_sizes(path, name, sizes, len(positions))
        # Consecutive runs, train first, as the library's make_dataloaders takes them.
        start = {"train": 0, "val": sizes[0], "test": sizes[0] + sizes[1]}[self.split]
        stop = start + sizes[EMORL_SPLITS.index(self.split)]
        self.indices = positions[start:stop]
        return rule + f", sizes {sizes}: {self.split} = positions [{start}, {stop})"

    def _init_emorl(self, handle) -> str:
        path = self.path
        groups = [s for s in EMORL_SPLITS if s in handle]
        if self.split == "all":
            raise Hdf5FormatError(
                f"{path}: EfficientMORL files keep splits in groups {groups}; name one "
                "(hdf5:<file>:train|val|test), 'all' is not supported"
            )
        if self.split not in handle:
            raise Hdf5FormatError(
                f"{path}: group {self.split!r} is missing (the file has {sorted(handle)}); "
                "name the split in the dataset name, hdf5:<file>:<split>"
            )
        images = _array(handle, f"{self.split}/imgs", path)
        _check_image_array(images, f"{self.split}/imgs", path)
        n, h, w = images.shape[:3]
        self._image_key = f"{self.split}/imgs"
        self._mask_key = None
        if "masks" in handle[self.split]:
            masks = _array(handle, f"{self.split}/masks", path)
            shape = tuple(masks.shape)
            if (
                len(shape) not in (4, 5)
                or shape[0] != n
                or shape[2:4] != (h, w)
                or (len(shape) == 5 and shape[4] != 1)
            ):
                raise Hdf5FormatError(
                    f"{path}: key '{self.split}/masks' has shape {shape}, expected "
                    f"({n}, K, {h}, {w}, 1): one mask per entity, entity 0 the background"
                )
            self._mask_key = f"{self.split}/masks"
        else:
            logger.warning(
                "%s has no '%s/masks': images only, ARI will not be computed on it",
                path,
                self.split,
            )
        self._factor_keys = []
        if "factors" in handle[self.split]:
            factors = _array(handle, f"{self.split}/factors", path)
            if factors.shape[0] != n:
                raise Hdf5FormatError(
                    f"{path}: key '{self.split}/factors' has {factors.shape[0]} rows for {n} images"
                )
            self._factor_keys = [f"{self.split}/factors"]
        if images.dtype != np.uint8 and images.dtype.kind == "f" and n:
            if float(np.max(images[0])) <= 1.0:
                raise Hdf5FormatError(
                    f"{path}: key '{self.split}/imgs' holds floats in [0, 1]; expected values "
                    "0..255 as EfficientMORL stores them"
                )
        self._frame = (h, w)
        self._file_examples = n
        self.has_masks = self._mask_key is not None
        self.indices = np.arange(n, dtype=np.int64)
        return f"EfficientMORL group {self.split!r} of {os.path.basename(path)}, in order"

    # -- reading --------------------------------------------------------------------------

    def _file(self):
        # A handle inherited through fork belongs to the parent's HDF5 state: drop it unused
        # (closing it here could disturb the parent) and open the file in this process.
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = _h5py().File(self.path, "r")
            self._pid = os.getpid()
        return self._h5

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_h5"] = None
        state["_pid"] = None
        return state

    def close(self) -> None:
        """Close this process's handle (reading reopens it)."""
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: h5py may already be gone
            pass

    def __len__(self) -> int:
        return len(self.indices)

    def _index(self, index: int) -> int:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        return int(self.indices[index])

    def load_arrays(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The example as stored: image uint8 (H, W, 3), label map int64 (H, W) or None.

        Args:
            index: position in this split.
        """
        i = self._index(index)
        handle = self._file()
        where = f"{self.path} {self._image_key}[{i}]"
        image = _as_uint8(np.asarray(handle[self._image_key][i]), where)
        if self._mask_key is None:
            return image, None
        stored = np.asarray(handle[self._mask_key][i])
        if self.layout == "ocl":
            label = stored.reshape(self._frame).astype(np.int64)
            if label.min() < 0:
                raise Hdf5FormatError(f"{self.path} mask[{i}]: negative labels")
        else:
            # (K, H, W[, 1]) entity masks -> the entity of largest value; all-zero pixels get 0,
            # the background entity.
            label = np.argmax(stored.reshape(stored.shape[0], *self._frame), axis=0)
            label = label.astype(np.int64)
        return image, label

    def factors(self, index: int) -> dict[str, np.ndarray]:
        """Stored factors of an example (not used by the model).

        Args:
            index: position in this split.

        Returns:
            ``{key: array}``: object-centric library: every top-level key other than ``image``
            and ``mask`` with one row per example (``visibility`` (K, 1), ``x`` (K, ...), ...);
            EfficientMORL: ``{"factors": (K, F)}`` when the group has them.
        """
        i = self._index(index)
        handle = self._file()
        return {key.rsplit("/", 1)[-1]: np.asarray(handle[key][i]) for key in self._factor_keys}

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        image, mask = self.load_arrays(index)
        if mask is not None:
            check_max_objects(mask, self.max_objects, f"{self.path} example {self._index(index)}")
        crop = CLEVR_CROP if self._frame == CLEVR_FRAME else None
        return to_model_input(image, mask, self.size, crop, self.resize)
