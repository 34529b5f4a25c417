"""Convert an official ``multi_object_datasets`` TFRecord file into a prepared dataset folder.

Splits: Tetrominoes and Multi-dSprites have no official split: the first records are taken in
order and the last ``test_size`` of them form the test part. CLEVR (``clevr6``, ``clevr10``):
the training part is the first ``train_records`` raw records (70K, ``DATASETS.
CLEVR_TRAIN_RECORDS``) after the object filter, the test part the next ``test_size`` scenes
that pass the filter. ``clevr6`` keeps scenes with sum(visibility) <= 7 (at most 6 objects plus
the background); the released IODINE filter keeps exactly 5 objects by a bug and is not copied.
``meta.json`` records ``num_test``, which the reader's ``_test`` split follows.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

import numpy as np
from tqdm import tqdm

from lib.data.format import BUILTIN_DATASETS
from lib.prepare import tfrecords
from lib.prepare.lock import dataset_lock
from lib.prepare.writer import DatasetWriter

logger = logging.getLogger(__name__)


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
    with dataset_lock(root, dataset), DatasetWriter(root, dataset, overwrite) as writer:
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
