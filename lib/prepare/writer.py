"""Write one prepared dataset folder atomically (format: ``lib/data/format.py``).

The folder is built under a temporary name in the same root, ``<root>/.<dataset>.tmp-XXXX``,
and renamed into place only when complete; on an error or Ctrl-C the temporary folder is
removed, and one left by a killed process is removed by the next preparation of the dataset
(``remove_stale_temps``, called under the dataset's lock). So a dataset folder either is
complete or does not exist.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import struct
import tempfile

import numpy as np

from lib.data.format import FORMAT_VERSION, dataset_dir
from lib.errors import DatasetExistsError

logger = logging.getLogger(__name__)

# Temporary siblings of <root>/<dataset>: the folder being written, and an old folder being
# replaced (--overwrite).
_TMP_INFIXES = (".tmp-", ".old-")


def storage_dtype(value: np.ndarray) -> np.dtype:
    """The dtype a factor array is stored with: float32 and uint8 kept, anything else
    float32."""
    return value.dtype if value.dtype in (np.uint8, np.float32) else np.dtype(np.float32)


def remove_stale_temps(root: str, dataset: str) -> list[str]:
    """Remove the temporary folders of ``dataset`` that killed runs left in ``root``.

    Call it only while holding the dataset's lock (``lib.prepare.lock.dataset_lock``): then
    no live process is writing them.

    Args:
        root: ``DATASETS.ROOT``.
        dataset: the dataset folder name.

    Returns:
        The folders removed.
    """
    removed = []
    for infix in _TMP_INFIXES:
        for path in sorted(glob.glob(os.path.join(glob.escape(root), f".{dataset}{infix}*"))):
            logger.info("removing %s, left by an interrupted preparation", path)
            shutil.rmtree(path)
            removed.append(path)
    return removed


class _NpyAppender:
    """Append rows to a ``.npy`` file whose length is known only at the end.

    The header is written with a fixed size (256 bytes, 64-aligned) and rewritten with the
    final row count on ``close``.
    """

    HEADER_BYTES = 256

    def __init__(self, path: str, dtype: np.dtype, row_shape: tuple[int, ...]):
        self.path = path
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(row_shape)
        self.count = 0
        self.file = open(path, "wb")
        self.file.write(self._header(0))

    def _header(self, count: int) -> bytes:
        descr = np.lib.format.dtype_to_descr(self.dtype)
        text = repr({"descr": descr, "fortran_order": False, "shape": (count, *self.row_shape)})
        body = self.HEADER_BYTES - 10  # magic (6) + version (2) + uint16 length (2)
        if len(text) + 1 > body:
            raise ValueError(f"{self.path}: shape {self.row_shape} too long for the npy header")
        text = text.ljust(body - 1) + "\n"
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", body) + text.encode("latin1")

    def append(self, rows: np.ndarray) -> None:
        """Append rows of shape (n, *row_shape), converted to the file's dtype."""
        self.file.write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())
        self.count += len(rows)

    def close(self) -> None:
        if self.file.closed:
            return
        self.file.seek(0)
        self.file.write(self._header(self.count))
        self.file.close()

    def abort(self) -> None:
        self.file.close()


class DatasetWriter:
    """Write one dataset folder atomically (temporary folder, then rename).

    Use as a context manager; call ``commit(meta)`` at the end. Leaving the block without a
    commit (an exception, Ctrl-C) removes everything written.

    Args:
        root: parent folder (``DATASETS.ROOT``); created if missing.
        dataset: folder name.
        overwrite: replace an existing folder (only once the new one is complete).

    Raises:
        FileExistsError: the folder exists and ``overwrite`` is False.
    """

    def __init__(self, root: str, dataset: str, overwrite: bool = False):
        self.root = root
        self.target = dataset_dir(root, dataset)
        self.overwrite = overwrite
        self.tmp: str | None = None
        self.arrays: dict[str, _NpyAppender] = {}
        self.count = 0

    def __enter__(self) -> DatasetWriter:
        if os.path.exists(self.target) and not self.overwrite:
            raise DatasetExistsError(
                f"{self.target} already exists; remove it or pass --overwrite (overwrite=True)"
            )
        os.makedirs(self.root, exist_ok=True)
        name = os.path.basename(self.target)
        self.tmp = tempfile.mkdtemp(prefix=f".{name}{_TMP_INFIXES[0]}", dir=self.root)
        # mkdtemp makes the folder private (0700); give it the usual permissions (umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o777 & ~umask)
        os.makedirs(os.path.join(self.tmp, "factors"))
        return self

    def _check_rows(self, key: str, rows: np.ndarray, where: str) -> None:
        """Raise unless ``rows`` have the row shape of the examples written to ``key``."""
        appender = self.arrays.get(key)
        if appender is not None and rows.shape[1:] != appender.row_shape:
            raise ValueError(
                f"{where}: {key} has shape {rows.shape[1:]}, but earlier examples have "
                f"{appender.row_shape} (every example needs the same shapes)"
            )

    def _append(self, key: str, rel: str, rows: np.ndarray, dtype) -> None:
        if key not in self.arrays:
            self.arrays[key] = _NpyAppender(os.path.join(self.tmp, rel), dtype, rows.shape[1:])
        self.arrays[key].append(rows)

    def add_many(
        self, images: np.ndarray, masks: np.ndarray, factors: dict[str, np.ndarray]
    ) -> None:
        """Append n examples at once.

        Args:
            images: uint8 (n, H, W, 3).
            masks: uint8 (n, H, W) label maps, 0 = background.
            factors: name -> array (n, ...) (float32 or uint8 kept; other dtypes stored as
                float32); the same names for every call.
        """
        images, masks = np.asarray(images), np.asarray(masks)
        n = len(images)
        where = (
            f"example {self.count}" if n == 1 else f"examples {self.count}..{self.count + n - 1}"
        )
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise ValueError(
                f"{where}: images must be uint8 (n, H, W, 3), got {images.dtype} {images.shape}"
            )
        if masks.dtype != np.uint8 or masks.shape != images.shape[:3]:
            raise ValueError(
                f"{where}: masks must be uint8 {images.shape[:3]}, got {masks.dtype} {masks.shape}"
            )
        known = {k.split("/", 1)[1] for k in self.arrays if k.startswith("factors/")}
        if self.count and set(factors) != known:
            raise ValueError(
                f"{where}: factors {sorted(factors)}, but earlier examples have {sorted(known)}"
            )
        for name, value in factors.items():
            if len(value) != n:
                raise ValueError(f"{where}: factor {name!r} has {len(value)} rows for {n} images")
        columns = [
            ("images", "images.npy", images, np.uint8),
            ("masks", "masks.npy", masks, np.uint8),
        ]
        for name, value in factors.items():
            value = np.asarray(value)
            rel = os.path.join("factors", f"{name}.npy")
            columns.append((f"factors/{name}", rel, value, storage_dtype(value)))
        # Every shape is checked before any row is written, so a rejected call leaves the
        # files as they were (all arrays keep one row per example counted).
        for key, _, rows, _ in columns:
            self._check_rows(key, rows, where)
        for key, rel, rows, dtype in columns:
            self._append(key, rel, rows, dtype)
        self.count += n

    def add(self, image: np.ndarray, mask: np.ndarray, factors: dict[str, np.ndarray]) -> None:
        """Append one example.

        Args:
            image: uint8 (H, W, 3).
            mask: uint8 (H, W) label map, 0 = background.
            factors: name -> array of a fixed shape per name (float32 or uint8 kept; other
                dtypes stored as float32).
        """
        image, mask = np.asarray(image), np.asarray(mask)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"example {self.count}: image must be uint8 (H, W, 3), got {image.dtype} "
                f"{image.shape}"
            )
        if mask.dtype != np.uint8 or mask.shape != image.shape[:2]:
            raise ValueError(
                f"example {self.count}: mask must be uint8 {image.shape[:2]}, got {mask.dtype} "
                f"{mask.shape}"
            )
        self.add_many(image[None], mask[None], {k: np.asarray(v)[None] for k, v in factors.items()})

    def commit(self, meta: dict) -> str:
        """Finish the files, write ``meta.json`` and move the folder into place.

        Args:
            meta: provenance; ``num_examples``, ``image_shape``, ``factors`` and
                ``format_version`` are filled in here.

        Returns:
            The dataset folder.
        """
        if self.count == 0:
            raise ValueError(f"no examples to write for {self.target}")
        for appender in self.arrays.values():
            appender.close()
        meta = dict(meta)
        meta["format_version"] = FORMAT_VERSION
        meta["num_examples"] = self.count
        meta["image_shape"] = list(self.arrays["images"].row_shape)
        meta["factors"] = {
            key.split("/", 1)[1]: {"shape": list(a.row_shape), "dtype": a.dtype.name}
            for key, a in self.arrays.items()
            if key.startswith("factors/")
        }
        crop = meta.get("crop")
        h, w = meta["image_shape"][:2]
        if crop is not None and not (0 <= crop[0] < crop[1] <= h and 0 <= crop[2] < crop[3] <= w):
            raise ValueError(f"crop {crop} does not fit the {h}x{w} frames of {self.target}")
        with open(os.path.join(self.tmp, "meta.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
        old = None
        if os.path.exists(self.target):  # overwrite: move the old folder away first
            prefix = f".{os.path.basename(self.target)}{_TMP_INFIXES[1]}"
            old = tempfile.mkdtemp(prefix=prefix, dir=self.root)
            os.replace(self.target, os.path.join(old, "d"))
        os.replace(self.tmp, self.target)
        self.tmp = None
        if old is not None:
            shutil.rmtree(old)
        return self.target

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.tmp is not None:  # not committed: remove every trace
            for appender in self.arrays.values():
                appender.abort()
            # Best effort: a failing clean-up must not hide the exception that got us here
            # (a folder left behind is removed by the next preparation, remove_stale_temps).
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
