"""Write a prepared dataset folder (``lib/data/format.py``) atomically, one process at a time.

The folder is built as ``<root>/.<dataset>.tmp-XXXX`` and renamed into place when complete. A
writer holds the ``fcntl`` lock ``<root>/.<dataset>.lock`` (``dataset_lock``); others block
until it is done, then see the finished folder. The kernel drops the lock of a killed process,
and the next holder removes the temporary folders it left (``remove_stale_temps``).
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator

import numpy as np

from lib.data.format import FORMAT_VERSION, dataset_dir
from lib.errors import DatasetExistsError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no locking, one process at a time
    fcntl = None

logger = logging.getLogger(__name__)

# Temporary siblings of <root>/<dataset>: the folder being written, an old one being replaced.
_TMP_INFIXES = (".tmp-", ".old-")


def storage_dtype(value: np.ndarray) -> np.dtype:
    """Factors keep float32 and uint8; anything else is stored as float32."""
    return value.dtype if value.dtype in (np.uint8, np.float32) else np.dtype(np.float32)


def remove_stale_temps(root: str, dataset: str) -> list[str]:
    """Remove (and return) the temporary folders of ``dataset`` that killed runs left in
    ``root``; call it only while holding the dataset's lock, so no live process owns them."""
    removed = []
    for infix in _TMP_INFIXES:
        for path in sorted(glob.glob(os.path.join(glob.escape(root), f".{dataset}{infix}*"))):
            logger.info("removing %s, left by an interrupted preparation", path)
            shutil.rmtree(path)
            removed.append(path)
    return removed


class _NpyAppender:
    """Append rows to a ``.npy`` file whose length is known only at the end: the header has
    a fixed size (256 bytes) and is rewritten with the row count on ``close``."""

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
        self.file.write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())
        self.count += len(rows)

    def close(self) -> None:
        if not self.file.closed:
            self.file.seek(0)
            self.file.write(self._header(self.count))
            self.file.close()


class DatasetWriter:
    """A context manager writing ``<root>/<dataset>`` (``root`` made if missing); call
    ``commit(meta)`` at the end: leaving the block without it removes everything. An existing
    folder is a FileExistsError unless ``overwrite`` (replaced once the new one is complete)."""

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

    def add_many(
        self, images: np.ndarray, masks: np.ndarray, factors: dict[str, np.ndarray]
    ) -> None:
        """Append n examples: images uint8 (n, H, W, 3), masks uint8 (n, H, W) label maps, and
        factors name -> (n, ...) array (the same names and row shapes for every example)."""
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
        columns = [("images", images, np.uint8), ("masks", masks, np.uint8)]
        for name, value in factors.items():
            value = np.asarray(value)
            if len(value) != n:
                raise ValueError(f"{where}: factor {name!r} has {len(value)} rows for {n} images")
            columns.append((f"factors/{name}", value, storage_dtype(value)))
        # Every shape is checked before any row is written: a rejected call writes nothing.
        for key, rows, _ in columns:
            if key in self.arrays and rows.shape[1:] != self.arrays[key].row_shape:
                raise ValueError(
                    f"{where}: {key} has shape {rows.shape[1:]}, but earlier examples have "
                    f"{self.arrays[key].row_shape} (every example needs the same shapes)"
                )
        for key, rows, dtype in columns:
            if key not in self.arrays:
                path = os.path.join(self.tmp, f"{key}.npy")
                self.arrays[key] = _NpyAppender(path, dtype, rows.shape[1:])
            self.arrays[key].append(rows)
        self.count += n

    def add(self, image: np.ndarray, mask: np.ndarray, factors: dict[str, np.ndarray]) -> None:
        """Append one example: image uint8 (H, W, 3), mask uint8 (H, W), factors name -> array."""
        self.add_many(
            np.asarray(image)[None],
            np.asarray(mask)[None],
            {k: np.asarray(v)[None] for k, v in factors.items()},
        )

    def commit(self, meta: dict) -> str:
        """Finish the files, write ``meta.json`` (adding ``format_version``, ``num_examples``,
        ``image_shape`` and ``factors``) and move the folder into place; returns it."""
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
                appender.file.close()
            # Best effort: a failing clean-up must not hide the exception that got us here
            # (a folder left behind is removed by the next preparation, remove_stale_temps).
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


def _acquire(path: str, dataset: str) -> int:
    """Open and lock ``path``; returns the descriptor. The holder removes the file when done:
    a waiter that locked a file no longer at ``path`` starts over."""
    waiting = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not waiting:
                    logger.info(
                        "another process is preparing %s (lock %s): waiting for it", dataset, path
                    )
                    waiting = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


@contextlib.contextmanager
def dataset_lock(root: str, dataset: str) -> Iterator[None]:
    """Hold the lock of ``<root>/<dataset>`` (``root`` is created if missing), having removed
    the temporaries of killed runs."""
    os.makedirs(root, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        yield
        return
    path = os.path.join(root, f".{dataset}.lock")
    fd = _acquire(path, dataset)
    try:
        remove_stale_temps(root, dataset)
        yield
    finally:
        # Unlink before unlocking: a waiter that then gets the old file sees it is gone.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
