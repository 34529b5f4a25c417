"""Built-in datasets (clevr6, clevr10, multi_dsprites, tetrominoes, ...) read from their
prepared folder ``DATASETS.ROOT/<dataset>/`` (format: ``lib/data/format.py``). Reading only:
``lib.prepare`` writes the folders (``tools/prepare_data.py``, or ``prepare_missing`` called
by the tools before they build datasets)."""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from torch.utils.data import Dataset

from lib.data.datasets.base import check_max_objects, square_crop_box, to_model_input
from lib.data.format import (
    BUILTIN_DATASETS,
    dataset_dir,
    factor_mapping,
    load_meta,
    prepare_command,
    recorded_test_size,
    released_factors,
)
from lib.errors import DatasetError, MissingDatasetError
from lib.spec import Factor

logger = logging.getLogger(__name__)

SPLITS = ("all", "train", "test")


def _require_prepared(path: str, dataset: str, root: str) -> None:
    """Check that a prepared folder and its ``meta.json`` exist.

    Args:
        path: the dataset folder, ``<root>/<dataset>``.
        dataset: built-in dataset name (for the command that prepares it).
        root: ``DATASETS.ROOT``.

    Raises:
        MissingDatasetError: no folder (the message says how to convert or generate it), or
            a folder without ``meta.json`` (not written by ``tools/prepare_data.py``, or
            incomplete).
    """
    if not os.path.isdir(path):
        raise MissingDatasetError(
            f"dataset folder {path} does not exist; "
            + (
                f"convert the official file with `{prepare_command(dataset, root)} "
                "--tfrecords FILE` (see data/README.md)"
                if BUILTIN_DATASETS[dataset].official_format
                else f"generate it with `{prepare_command(dataset, root)}`; the tools "
                "(train_net.py, test_net.py, ...) generate it themselves"
            )
        )
    if not os.path.isfile(os.path.join(path, "meta.json")):
        raise MissingDatasetError(
            f"{path} exists but has no meta.json: it was not written by "
            "tools/prepare_data.py (or is incomplete); remove it and prepare the dataset "
            f"again (`{prepare_command(dataset, root)} --overwrite`)"
        )


class PreparedDataset(Dataset):
    """One split of a prepared built-in dataset.

    Splits: ``test`` = the last ``num_test`` examples (recorded in ``meta.json`` when the
    folder was prepared), ``train`` = the others, ``all`` = every example; all in stored (file)
    order.

    Args:
        cfg: the config (``DATASETS.ROOT``, ``DATASETS.MAX_OBJECTS``, ``INPUT.IMAGE_SIZE``,
            ``INPUT.RESIZE``).
        is_train: unused (no augmentation); kept for the registry's constructor signature.
        dataset: built-in dataset name, e.g. ``"clevr6"``.
        split: ``"all"``, ``"train"`` or ``"test"``.
        return_factors: items ``(image, mask, factors)`` when the folder has factors with a
            released mapping (``make_data_loader(with_factors=True)``).
        return_uint8: uint8 images when the stored frames need no resize.

    Items are ``(image float32 (3, S, S) in [0, 1], mask int64 (S, S))``, S =
    ``INPUT.IMAGE_SIZE``, after the dataset's crop (CLEVR: rows 29:221, cols 64:256) or a
    centre square crop, and a resize when the crop is not already S x S.

    Attributes:
        provenance: ``meta.json`` plus ``path``, ``split``, ``split_range`` [start, stop).
        has_masks: True.
        factor_mapping: the released factor regressor's mapping ``((name, size, type), ...)``
            when the dataset has one and its folder stores factors, else None.
        return_factors: False: items are ``(image, mask)`` as the contract says; True (asked
            for and available): ``(image, mask, factors)`` with ``factors`` = ``{name: float32
            (L, n)}`` of ``released_factors`` plus ``visibility`` (L,). Fixed at construction.
        return_uint8: whether images are uint8 (asked for and no resize needed).
        start, stop: the split's range of stored indices.

    Raises:
        FileNotFoundError: the folder or its ``meta.json`` is missing (the message names the
            folder and the command that prepares it).
        ValueError: an unknown split, an empty split, a bad ``meta.json``, or array files that
            disagree with it.
    """

    def __init__(
        self,
        cfg,
        is_train: bool,
        dataset: str,
        split: str = "all",
        return_factors: bool = False,
        return_uint8: bool = False,
    ):
        if split not in SPLITS:
            raise DatasetError(f"split must be one of {SPLITS}, got {split!r}")
        root = str(cfg.DATASETS.ROOT)
        self.path = dataset_dir(root, dataset)
        _require_prepared(self.path, dataset, root)
        self.meta = load_meta(self.path)
        self._init_frames(cfg)
        n = int(self.meta["num_examples"])
        self.start, self.stop = self._split_range(split, n)
        self.has_masks = True
        self.provenance = dict(self.meta)
        self.provenance.update(
            path=os.path.abspath(self.path), split=split, split_range=[self.start, self.stop]
        )
        logger.info(
            "dataset %s (%s split): %d of %d examples from %s; source %s",
            dataset,
            split,
            self.stop - self.start,
            n,
            self.path,
            self.meta.get("source_file") or self.meta.get("generator") or self.meta["source"],
        )
        self.dataset = dataset
        self.factor_mapping = self._usable_factor_mapping(dataset)
        # The item format, fixed for the dataset's life (loader workers copy it at start).
        self.return_factors = bool(return_factors) and self.factor_mapping is not None
        self.return_uint8 = bool(return_uint8) and self.native_size
        self._images = self._masks = None
        self._factor_arrays: dict[str, np.ndarray] = {}
        self._open()  # validates the arrays now, not in a worker
        for name, array in (("images", self._images), ("masks", self._masks)):
            if array.shape[0] != n:
                raise DatasetError(
                    f"{self.path}/{name}.npy has {array.shape[0]} examples, meta.json says {n}"
                )

    # -- construction ---------------------------------------------------------------------

    def _init_frames(self, cfg) -> None:
        """Set the item geometry: model size, resize method, object limit, crop, and whether
        the (cropped) stored frames are already at the model size.

        Args:
            cfg: the config (``INPUT.IMAGE_SIZE``, ``INPUT.RESIZE``, ``DATASETS.MAX_OBJECTS``).
        """
        self.size = int(cfg.INPUT.IMAGE_SIZE)
        self.resize = str(cfg.INPUT.RESIZE)
        self.max_objects = int(cfg.DATASETS.MAX_OBJECTS)
        self.crop = tuple(self.meta["crop"]) if self.meta.get("crop") else None
        h, w = self.meta["image_shape"][:2]
        r0, r1, _, _ = self.crop if self.crop is not None else square_crop_box(h, w)
        # Frames already at the model size: items can travel as uint8 (``return_uint8``).
        self.native_size = r1 - r0 == self.size

    def _split_range(self, split: str, n: int) -> tuple[int, int]:
        """The stored indices [start, stop) of a split: the test split is the last
        ``num_test`` examples recorded in ``meta.json``, train the others.

        Args:
            split: ``"all"``, ``"train"`` or ``"test"``.
            n: examples in the folder.

        Returns:
            ``(start, stop)``.

        Raises:
            DatasetError: the split is empty.
        """
        test_size = recorded_test_size(self.meta, self.path) if split != "all" else 0
        start, stop = {
            "all": (0, n),
            "train": (0, n - test_size),
            "test": (n - test_size, n),
        }[split]
        if stop <= start:
            raise DatasetError(
                f"split {split!r} of {self.path} is empty: the prepared set has {n} examples, "
                f"{test_size} of them in the test split (meta.json num_test)"
            )
        return start, stop

    def _usable_factor_mapping(self, dataset: str) -> tuple[Factor, ...] | None:
        """The released factor mapping of ``dataset`` when its folder stores factors.

        Args:
            dataset: built-in dataset name.

        Returns:
            The mapping ``((name, size, type), ...)``, or None (no mapping, or no factors
            stored; either is logged, as the factor regressor is then skipped).
        """
        mapping = factor_mapping(dataset)
        if mapping is not None and not self.meta.get("factors"):
            logger.info("%s stores no factors: no factor regressor for it", self.path)
            return None
        if mapping is None and self.meta.get("factors"):
            logger.info(
                "%s: its factors (%s) have no released regressor mapping; not used",
                self.path,
                ", ".join(sorted(self.meta["factors"])),
            )
        return mapping

    def _open(self) -> None:
        # Memory-mapped: opening is instant and each worker maps the same page cache.
        self._images = np.load(os.path.join(self.path, "images.npy"), mmap_mode="r")
        self._masks = np.load(os.path.join(self.path, "masks.npy"), mmap_mode="r")

    def __getstate__(self) -> dict:
        # Pickling a memmap copies its data; workers started by spawn reopen the files instead.
        state = self.__dict__.copy()
        state["_images"] = state["_masks"] = None
        state["_factor_arrays"] = {}
        return state

    def __len__(self) -> int:
        return self.stop - self.start

    def _index(self, index: int) -> int:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        return self.start + index

    def load_arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The example as stored: image uint8 (H, W, 3), label map uint8 (H, W) (read-only
        views of the memory maps)."""
        if self._images is None:
            self._open()
        i = self._index(index)
        return np.asarray(self._images[i]), np.asarray(self._masks[i])

    def factors(self, index: int) -> dict[str, np.ndarray]:
        """Generative factors of an example: ``{name: array}`` (shapes in ``meta.json``)."""
        i = self._index(index)
        out = {}
        for name in self.meta.get("factors", {}):
            if name not in self._factor_arrays:
                path = os.path.join(self.path, "factors", f"{name}.npy")
                self._factor_arrays[name] = np.load(path, mmap_mode="r")
            out[name] = np.asarray(self._factor_arrays[name][i])
        return out

    def released_factors(self, index: int) -> dict[str, torch.Tensor]:
        """The factor regressor's inputs of an example: ``{name: float32 (L, n)}`` plus
        ``visibility`` (L,) (see ``lib.data.format.released_factors``)."""
        if self.factor_mapping is None:
            raise DatasetError(f"{self.path}: no factor mapping for dataset {self.dataset!r}")
        family_source = str(self.meta.get("source", "official"))
        arrays = released_factors(self.dataset, family_source, self.factors(index))
        return {name: torch.from_numpy(np.array(a, np.float32)) for name, a in arrays.items()}

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.load_arrays(index)
        check_max_objects(mask, self.max_objects, f"{self.path} example {self._index(index)}")
        image_t, mask_t = to_model_input(
            image, mask, self.size, self.crop, self.resize, uint8=self.return_uint8
        )
        if self.return_factors:
            return image_t, mask_t, self.released_factors(index)
        return image_t, mask_t
