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

from lib.data.datasets.base import ItemFormat, square_crop_box
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


class PreparedDataset(Dataset):
    """One split of a prepared built-in dataset, in stored order: ``test`` = the last
    ``num_test`` examples (``meta.json``), ``train`` the others, ``all`` every example.

    Args:
        cfg: the config (``DATASETS.ROOT``, ``INPUT``, ``DATASETS.MAX_OBJECTS``).
        is_train: whether it is used for training (``TEST.NATIVE_LABELS`` only in evaluation).
        dataset: built-in dataset name, e.g. ``"clevr6"``.
        split: ``"all"``, ``"train"`` or ``"test"``.

    Items are ``(image float32 (3, S, S) in [0, 1], mask int64 (S, S))`` after the dataset's
    crop or the centre square; ``(image, mask, factors)`` with ``return_factors``.

    Attributes:
        provenance: ``meta.json`` plus ``path``, ``split``, ``split_range``, ``resize``.
        factor_mapping: the released regressor's mapping when the dataset has one and its
            folder stores factors, else None.
        native_size: the (cropped) stored frames are S x S, so items can be uint8.
        return_factors, return_uint8: the item format (``lib.data.build.set_item_format``).

    Raises:
        MissingDatasetError: the folder or its ``meta.json`` is missing (the message names
            the command that prepares it).
        DatasetError: an unknown or empty split, a bad ``meta.json``, or an ``.npy`` file that
            is missing, unreadable, not uint8 or disagrees with ``meta.json``.
    """

    def __init__(self, cfg, is_train: bool, dataset: str, split: str = "all"):
        if split not in SPLITS:
            raise DatasetError(f"split must be one of {SPLITS}, got {split!r}")
        root = str(cfg.DATASETS.ROOT)
        self.path = dataset_dir(root, dataset)
        if not os.path.isdir(self.path):
            command = prepare_command(dataset, root)
            raise MissingDatasetError(
                f"dataset folder {self.path} does not exist; "
                + (
                    f"convert the official file with `{command} --tfrecords FILE` (see "
                    "data/README.md)"
                    if BUILTIN_DATASETS[dataset].official_format
                    else f"generate it with `{command}`; the tools (train_net.py, "
                    "test_net.py, ...) generate it themselves"
                )
            )
        self.meta = load_meta(self.path)
        self.format = ItemFormat.from_cfg(cfg, is_train, "prepared")
        self.crop = tuple(self.meta["crop"]) if self.meta.get("crop") else None
        h, w = self.meta["image_shape"][:2]
        r0, r1, _, _ = self.format.crop or self.crop or square_crop_box(h, w)
        self.native_size = r1 - r0 == self.format.size
        n = self.meta["num_examples"]
        test_size = recorded_test_size(self.meta, self.path) if split != "all" else 0
        self.start = n - test_size if split == "test" else 0
        self.stop = n - test_size if split == "train" else n
        if self.stop <= self.start:
            raise DatasetError(
                f"split {split!r} of {self.path} is empty: the prepared set has {n} examples, "
                f"{test_size} of them in the test split (meta.json num_test)"
            )
        self.has_masks = True
        self.provenance = {
            **self.meta,
            "path": os.path.abspath(self.path),
            "split": split,
            "split_range": [self.start, self.stop],
            **self.format.describe(not cfg.INPUT.RESIZE),
        }
        source = self.meta.get("source_file") or self.meta.get("generator") or self.meta["source"]
        logger.info(
            "dataset %s (%s split): %d of %d examples from %s; source %s; resize %s",
            *(dataset, split, self.stop - self.start, n, self.path, source, self.format.resize),
        )
        self.dataset = dataset
        self.factor_mapping = self._usable_factor_mapping(dataset)
        self.return_factors = self.return_uint8 = False
        self._images = self._masks = None
        self._factor_arrays: dict[str, np.ndarray] = {}
        self._open()  # validates the arrays now, not in a worker

    def _usable_factor_mapping(self, dataset: str) -> tuple[Factor, ...] | None:
        # The released mapping when the folder stores factors; either lack is logged, as the
        # factor regressor is then skipped.
        mapping = factor_mapping(dataset)
        stored = sorted(self.meta.get("factors") or ())
        if mapping is not None and not stored:
            logger.info("%s stores no factors: no factor regressor for it", self.path)
            return None
        if mapping is None and stored:
            logger.info("%s: its factors %s have no released mapping; not used", self.path, stored)
        return mapping

    def _load(self, name: str, ndim: int) -> np.ndarray:
        """``<path>/<name>.npy`` memory-mapped (instant; workers share the page cache), checked."""
        path = os.path.join(self.path, f"{name}.npy")
        command = prepare_command(self.dataset, os.path.dirname(self.path))
        again = f"; prepare the dataset again (`{command} --overwrite`)"
        if not os.path.isfile(path):
            raise DatasetError(f"{path} is missing: the folder is incomplete{again}")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise DatasetError(f"{path}: not a readable .npy array ({exc}){again}") from exc
        if array.dtype != np.uint8 or array.ndim != ndim:
            raise DatasetError(
                f"{path}: {array.dtype} of shape {array.shape}, expected uint8 with {ndim} "
                f"dimensions{again}"
            )
        if array.shape[0] != self.meta["num_examples"]:
            n = self.meta["num_examples"]
            raise DatasetError(f"{path} has {array.shape[0]} examples, meta.json says {n}{again}")
        return array

    def _open(self) -> None:
        self._images = self._load("images", 4)
        self._masks = self._load("masks", 3)

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
        for name in self.meta.get("factors", {}):
            if name not in self._factor_arrays:
                path = os.path.join(self.path, "factors", f"{name}.npy")
                self._factor_arrays[name] = np.load(path, mmap_mode="r")
        return {name: np.asarray(a[i]) for name, a in self._factor_arrays.items()}

    def released_factors(self, index: int) -> dict[str, torch.Tensor]:
        """The factor regressor's inputs of an example: ``{name: float32 (L, n)}`` plus
        ``visibility`` (L,) (``lib.data.format.released_factors``)."""
        if self.factor_mapping is None:
            raise DatasetError(f"{self.path}: no factor mapping for dataset {self.dataset!r}")
        source = str(self.meta.get("source", "official"))
        arrays = released_factors(self.dataset, source, self.factors(index))
        return {name: torch.from_numpy(np.array(a, np.float32)) for name, a in arrays.items()}

    def __getitem__(self, index: int) -> tuple:
        image, mask = self.load_arrays(index)
        where = f"{self.path} example {self._index(index)}"
        item = self.format(image, mask, self.crop, self.return_uint8, where)
        return (*item, self.released_factors(index)) if self.return_factors else item
