"""Write the built-in datasets to disk: convert the official TFRecords or generate them.

On-disk format (``FORMAT_VERSION`` 1), one folder per dataset, ``<root>/<dataset>/``::

    images.npy          uint8 (N, H, W, 3)  RGB frames as stored by the source (CLEVR 240x320)
    masks.npy           uint8 (N, H, W)     label maps, 0 = background, k = entity k
    factors/<name>.npy  (N, ...)            per-example generative factors (float32 or uint8)
    meta.json           provenance, counts, split sizes, crop, format version

Examples are in source order with the held-out test examples LAST. The ``.npy`` files load
memory-mapped (``np.load(..., mmap_mode="r")``), so opening a dataset is instant and workers
share the page cache. A folder is written under a temporary name in the same root and renamed
into place only when complete; on any error or Ctrl-C the temporary folder is removed, so a
dataset folder either is complete or does not exist.

Splits: ``<name>_test`` is the last ``DATASETS.TEST_SIZE`` examples and ``<name>_train`` the
rest. Official Tetrominoes and Multi-dSprites have no split: the first records are taken in
order and the last ``test_size`` of them form the test part. CLEVR (``clevr6``, ``clevr10``):
the training part is the first ``train_records`` raw records (70K, ``DATASETS.
CLEVR_TRAIN_RECORDS``) after the object filter, the test part the next ``test_size`` scenes
that pass the filter. ``clevr6`` keeps scenes with sum(visibility) <= 7 (at most 6 objects plus
the background); the released IODINE filter keeps exactly 5 objects by a bug and is not copied.
Generated sets draw the training part from ``seed`` and the test part from an independent seed
(``derived_test_seed``), so the two parts are disjoint streams.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from lib.data import tfrecords
from lib.data.generators import GENERATORS, generator_description, get_generator

try:  # serialises concurrent auto-generation (several ranks); POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CLEVR_CROP = (29, 221, 64, 256)  # rows 29:221, cols 64:256 of the 240x320 frame (official)


@dataclass(frozen=True)
class BuiltinSpec:
    """A built-in dataset.

    Attributes:
        official_format: key of ``tfrecords.OFFICIAL_FORMATS`` of the file it converts from, or
            None for a dataset that is only generated (sprites).
        crop: ``(row0, row1, col0, col1)`` applied when loading, or None (centre square crop).
        max_visible: keep only records with sum(visibility) <= this (CLEVR6: 7), or None.
        split_by_records: CLEVR rule: training part = the first ``train_records`` raw records
            (filtered), test part = the next ``test_size`` filtered scenes.
    """

    official_format: str | None
    crop: tuple[int, int, int, int] | None = None
    max_visible: float | None = None
    split_by_records: bool = False


BUILTIN_DATASETS: dict[str, BuiltinSpec] = {
    "tetrominoes": BuiltinSpec("tetrominoes"),
    "multi_dsprites": BuiltinSpec("multi_dsprites_colored_on_grayscale"),
    "clevr6": BuiltinSpec("clevr_with_masks", CLEVR_CROP, 7.0, True),
    "clevr10": BuiltinSpec("clevr_with_masks", CLEVR_CROP, None, True),
    "sprites": BuiltinSpec(None),
    "sprites5": BuiltinSpec(None),
}


def dataset_dir(root: str, dataset: str) -> str:
    """Folder of a prepared built-in dataset.

    Args:
        root: ``DATASETS.ROOT``.
        dataset: built-in dataset name.

    Returns:
        ``<root>/<dataset>``.
    """
    return os.path.join(root, dataset)


def derived_test_seed(seed: int) -> int:
    """Seed of the test part of a generated set.

    Args:
        seed: seed of the training part.

    Returns:
        A 32-bit seed from ``SeedSequence([seed, 0x7E57])``: an independent stream, so the test
        part does not repeat the training part.
    """
    return int(np.random.SeedSequence([seed, 0x7E57]).generate_state(1, dtype=np.uint32)[0])


def generate_command(dataset: str, root: str, num_examples: int, seed: int) -> str:
    """The ``tools/prepare_data.py`` command line that generates a dataset by hand.

    Args:
        dataset: built-in dataset name.
        root: ``DATASETS.ROOT``.
        num_examples: training examples.
        seed: generator seed.

    Returns:
        The shell command.
    """
    return (
        f"python tools/prepare_data.py --dataset {dataset} --root {root} "
        f"--num-examples {num_examples} --seed {seed}"
    )


# --------------------------------------------------------------------------------------------
# Writing


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

    def append(self, row: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(row, dtype=self.dtype).tobytes())
        self.count += 1

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
            raise FileExistsError(
                f"{self.target} already exists; remove it or pass --overwrite (overwrite=True)"
            )
        os.makedirs(self.root, exist_ok=True)
        name = os.path.basename(self.target)
        self.tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=self.root)
        # mkdtemp makes the folder private (0700); give it the usual permissions (umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o777 & ~umask)
        os.makedirs(os.path.join(self.tmp, "factors"))
        return self

    def _append(self, key: str, rel: str, value: np.ndarray, dtype) -> None:
        value = np.asarray(value)
        if key not in self.arrays:
            self.arrays[key] = _NpyAppender(os.path.join(self.tmp, rel), dtype, value.shape)
        appender = self.arrays[key]
        if value.shape != appender.row_shape:
            raise ValueError(
                f"example {self.count}: {key} has shape {value.shape}, but earlier examples "
                f"have {appender.row_shape} (every example needs the same shapes)"
            )
        appender.append(value)

    def add(self, image: np.ndarray, mask: np.ndarray, factors: dict[str, np.ndarray]) -> None:
        """Append one example.

        Args:
            image: uint8 (H, W, 3).
            mask: uint8 (H, W) label map, 0 = background.
            factors: name -> array of a fixed shape per name (float32 or uint8 kept; other
                dtypes stored as float32).
        """
        image = np.asarray(image)
        mask = np.asarray(mask)
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
        self._append("images", "images.npy", image, np.uint8)
        self._append("masks", "masks.npy", mask, np.uint8)
        for name, value in factors.items():
            value = np.asarray(value)
            dtype = value.dtype if value.dtype in (np.uint8, np.float32) else np.float32
            self._append(f"factors/{name}", os.path.join("factors", f"{name}.npy"), value, dtype)
        self.count += 1

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
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(self.target)}.old-", dir=self.root)
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
            # Best effort: a failing clean-up must not hide the exception that got us here.
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


# --------------------------------------------------------------------------------------------
# Official TFRecords


def _official_example(record: dict[str, np.ndarray], fmt_name: str) -> tuple:
    """Image, label map and factors of one checked official record."""
    mask = record["mask"][..., 0]
    if fmt_name.startswith("multi_dsprites"):
        mask = np.moveaxis(mask, 2, 0)  # stored (H, W, E): the official reader transposes
    # Label = entity whose mask is largest (masks are 0/255); entry 0 is the background.
    label = np.argmax(mask, axis=0).astype(np.uint8)
    factors = {k: v for k, v in record.items() if k not in ("image", "mask")}
    return record["image"], label, factors


def convert_official(
    dataset: str,
    tfrecords_path: str,
    root: str,
    *,
    test_size: int = 320,
    max_examples: int | None = None,
    train_records: int = 70000,
    overwrite: bool = False,
    progress: bool = True,
) -> str:
    """Convert an official ``multi_object_datasets`` file into ``<root>/<dataset>``.

    Args:
        dataset: a key of ``BUILTIN_DATASETS``.
        tfrecords_path: the GZIP TFRecord file (Tetrominoes, Multi-dSprites
            colored_on_grayscale, or CLEVR with masks for clevr6/clevr10).
        root: ``DATASETS.ROOT``.
        test_size: examples of the test part (Tetrominoes/Multi-dSprites: the last ones of
            those converted; CLEVR: the filtered scenes after ``train_records``).
        max_examples: Tetrominoes/Multi-dSprites: convert only the first N records. CLEVR: keep
            at most N training scenes (the test scenes are unchanged).
        train_records: CLEVR: raw records that make up the training part.
        overwrite: replace an existing folder.
        progress: show a tqdm progress bar of records read.

    Returns:
        The dataset folder.

    Raises:
        KeyError: an unknown dataset.
        tfrecords.TFRecordError: a corrupt file or a file of another dataset (nothing written).
        ValueError: CLEVR file with no record after ``train_records`` (no test scenes).
    """
    if dataset not in BUILTIN_DATASETS:
        raise KeyError(f"unknown built-in dataset {dataset!r}; known: {list(BUILTIN_DATASETS)}")
    spec = BUILTIN_DATASETS[dataset]
    fmt_name = spec.official_format
    if fmt_name is None:
        raise ValueError(
            f"dataset {dataset!r} has no official file to convert; generate it instead "
            f"(tools/prepare_data.py --dataset {dataset})"
        )
    started = time.time()
    num_train = num_test = records_read = rejected = 0
    total = train_records if spec.split_by_records else max_examples
    with DatasetWriter(root, dataset, overwrite) as writer:
        bar = tqdm(total=total, desc=f"convert {dataset}", unit="rec", disable=not progress)
        with contextlib.closing(bar):
            for payload in tfrecords.iter_records(tfrecords_path):
                if spec.split_by_records:
                    in_train = records_read < train_records
                    if not in_train and num_test >= test_size:
                        break
                else:
                    in_train = True
                    if max_examples is not None and records_read >= max_examples:
                        break
                where = f"{tfrecords_path} record {records_read}"
                records_read += 1
                bar.update(1)
                if spec.split_by_records and in_train and max_examples is not None:
                    if num_train >= max_examples:
                        continue  # enough training scenes: skip to the test records unparsed
                record = tfrecords.parse_official(payload, fmt_name, where)
                if spec.max_visible is not None:
                    if float(record["visibility"].sum()) > spec.max_visible:
                        rejected += 1
                        continue
                image, label, factors = _official_example(record, fmt_name)
                writer.add(image, label, factors)
                if in_train:
                    num_train += 1
                else:
                    num_test += 1
        if spec.split_by_records:
            if num_test == 0:
                raise ValueError(
                    f"{tfrecords_path}: no scene for the test split after the first "
                    f"{train_records} records (the file has {records_read}); lower train_records "
                    "(--train-records, DATASETS.CLEVR_TRAIN_RECORDS)"
                )
            if num_test < test_size:
                logger.warning(
                    "%s: only %d test scenes after record %d (wanted %d)",
                    tfrecords_path,
                    num_test,
                    train_records,
                    test_size,
                )
        else:
            num_test = min(test_size, writer.count)
            num_train = writer.count - num_test
        filter_text = None
        if spec.max_visible is not None:
            filter_text = f"sum(visibility) <= {spec.max_visible:g}"
        meta = {
            "dataset": dataset,
            "source": "official",
            "official_format": fmt_name,
            "source_file": os.path.abspath(tfrecords_path),
            "source_file_bytes": os.path.getsize(tfrecords_path),
            "records_read": records_read,
            "records_rejected_by_filter": rejected,
            "filter": filter_text,
            "train_records": train_records if spec.split_by_records else None,
            "max_examples": max_examples,
            "num_train": num_train,
            "num_test": num_test,
            "crop": list(spec.crop) if spec.crop else None,
            "label_map": "argmax over the official entity masks; 0 = background",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(time.time() - started, 1),
        }
        path = writer.commit(meta)
    logger.info("wrote %s: %d train + %d test examples", path, num_train, num_test)
    return path


# --------------------------------------------------------------------------------------------
# Generated datasets


def generate_dataset(
    dataset: str,
    root: str,
    *,
    num_examples: int,
    seed: int,
    test_size: int = 320,
    overwrite: bool = False,
    progress: bool = True,
) -> str:
    """Generate ``<root>/<dataset>`` with the registered generator.

    Args:
        dataset: a key of ``lib.data.generators.GENERATORS``.
        root: ``DATASETS.ROOT``.
        num_examples: training examples, from ``seed``.
        seed: seed of the training stream.
        test_size: test examples, from ``derived_test_seed(seed)``, stored last.
        overwrite: replace an existing folder.
        progress: show a tqdm progress bar.

    Returns:
        The dataset folder.
    """
    generate = get_generator(dataset)
    spec = BUILTIN_DATASETS.get(dataset)
    test_seed = derived_test_seed(seed)
    started = time.time()

    def stream() -> Iterator[dict]:
        yield from generate(num_examples, seed)
        yield from generate(test_size, test_seed)

    with DatasetWriter(root, dataset, overwrite) as writer:
        total = num_examples + test_size
        for item in tqdm(stream(), total=total, desc=f"generate {dataset}", disable=not progress):
            writer.add(item["image"], item["mask"], item.get("factors", {}))
        if writer.count != total:
            raise ValueError(f"generator of {dataset} yielded {writer.count} of {total} examples")
        meta = {
            "dataset": dataset,
            "source": "generated",
            **generator_description(dataset),
            "seed": seed,
            "test_seed": test_seed,
            "num_train": num_examples,
            "num_test": test_size,
            "crop": list(spec.crop) if spec and spec.crop else None,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(time.time() - started, 1),
        }
        path = writer.commit(meta)
    logger.info("wrote %s: %d train + %d test examples", path, num_examples, test_size)
    return path


@contextlib.contextmanager
def _lock(root: str, dataset: str):
    # Several processes (ranks) may find the folder missing at once: one generates, the others
    # wait and then find it complete.
    if fcntl is None:  # pragma: no cover
        yield
        return
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, f".{dataset}.lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_prepared(dataset: str, cfg) -> str:
    """Return the folder of a built-in dataset, generating it first when it is missing.

    A missing folder of a dataset with a generator is generated with
    ``DATASETS.GENERATE_SIZE`` training examples from ``DATASETS.GENERATE_SEED`` plus
    ``DATASETS.TEST_SIZE`` test examples, after a loud warning that names the folder and the
    command that does the same by hand. An existing folder is used as it is, whatever its
    sizes.

    Args:
        dataset: a built-in dataset name (``clevr6``, ``tetrominoes``, ...), not a split name.
        cfg: the config (``DATASETS.ROOT``, ``GENERATE_SIZE``, ``GENERATE_SEED``, ``TEST_SIZE``).

    Returns:
        ``DATASETS.ROOT/<dataset>``.

    Raises:
        FileNotFoundError: the folder is missing and no generator exists, or the folder exists
            without ``meta.json`` (an incomplete or foreign folder).
    """
    root = cfg.DATASETS.ROOT
    path = dataset_dir(root, dataset)
    meta = os.path.join(path, "meta.json")
    if os.path.isfile(meta):
        return path
    if os.path.exists(path):
        raise FileNotFoundError(
            f"{path} exists but has no meta.json: it was not written by tools/prepare_data.py "
            "(or is incomplete); remove it and prepare the dataset again"
        )
    if dataset not in GENERATORS:
        raise FileNotFoundError(
            f"dataset folder {path} does not exist and {dataset!r} has no generator; "
            f"prepare it with tools/prepare_data.py --dataset {dataset} --tfrecords FILE "
            f"--root {root}"
        )
    size, seed, test = (
        cfg.DATASETS.GENERATE_SIZE,
        cfg.DATASETS.GENERATE_SEED,
        cfg.DATASETS.TEST_SIZE,
    )
    with _lock(root, dataset):
        if os.path.isfile(meta):  # another process generated it while we waited
            return path
        logger.warning(
            "!!! Dataset folder %s is missing: GENERATING %s now (%d training + %d test "
            "examples, seed %d). This is a procedural stand-in, not the official data. To do "
            "this by hand: %s   (or convert the official file with --tfrecords FILE)",
            path,
            dataset,
            size,
            test,
            seed,
            generate_command(dataset, root, size, seed),
        )
        generate_dataset(dataset, root, num_examples=size, seed=seed, test_size=test)
    return path


def load_meta(path: str) -> dict:
    """Read and check ``<path>/meta.json`` of a prepared dataset.

    Args:
        path: the dataset folder.

    Returns:
        The metadata dict.

    Raises:
        FileNotFoundError: no ``meta.json``.
        ValueError: an unsupported format version or missing keys.
    """
    meta_path = os.path.join(path, "meta.json")
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"{meta_path} does not exist: not a prepared dataset folder")
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{meta_path}: format_version {meta.get('format_version')!r}, this code reads "
            f"{FORMAT_VERSION}; prepare the dataset again"
        )
    for key in ("num_examples", "source", "image_shape"):
        if key not in meta:
            raise ValueError(f"{meta_path}: missing key {key!r}")
    return meta
