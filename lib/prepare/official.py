"""Convert an official ``multi_object_datasets`` TFRecord file into a prepared dataset folder.

Splits: with no official split, the last ``test_size`` examples converted are the test part.
CLEVR: the first ``train_records`` raw records (``DATASETS.CLEVR_TRAIN_RECORDS``) after the
object filter are the training part, the next ``test_size`` kept scenes the test part;
``clevr6`` keeps sum(visibility) <= 7 (the released IODINE filter's bug, exactly 5 objects, is
not copied). Labels: the argmax over the entity masks, 0 the background; Objects Room's room
entities 0-3 (sky, floor, two wall halves) become 0 and object entity k >= 4 becomes k - 3, so
``fg_ari`` ignores the room. CATER (ZLIB shards, a quoted glob): each 33-frame video gives the
frames ``CATER_FRAMES`` as examples, with their ``camera_matrix`` and ``object_positions``;
``max_examples`` counts videos and the test part is whole videos.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import math
import os
import time
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

import lib.prepare.tfrecords as tfrecords
from lib.data.format import BUILTIN_DATASETS
from lib.errors import DatasetError, MissingDatasetError
from lib.prepare.writer import DatasetWriter, dataset_lock

logger = logging.getLogger(__name__)

CATER_FRAMES: tuple[int, ...] = (0, 8, 16, 24, 32)
OBJECTS_ROOM_BACKGROUND_ENTITIES = 4  # sky, floor and the two wall halves
ROOM_LABELS = (
    "the background entities 0-3 (sky, floor, two wall halves) merged into 0, object entity "
    "k >= 4 labelled k - 3"
)


def _examples(record: dict[str, np.ndarray], fmt_name: str, frames: Sequence[int]) -> list:
    """The ``(image, label map, factors)`` of a checked record: one, or CATER's frames."""
    if fmt_name == "cater_with_masks":
        positions = np.transpose(record["object_positions"], (1, 0, 2))  # -> (T, E, 3)
        return [
            (
                record["image"][t],
                np.argmax(record["mask"][t, ..., 0], axis=0).astype(np.uint8),
                {"camera_matrix": record["camera_matrix"][t], "object_positions": positions[t]},
            )
            for t in frames
        ]
    mask = record["mask"][..., 0]
    if fmt_name.startswith("multi_dsprites"):
        mask = np.moveaxis(mask, 2, 0)  # stored (H, W, E): the official reader transposes
    label = np.argmax(mask, axis=0)  # masks are 0/255
    if fmt_name == "objects_room":
        label = np.maximum(label - (OBJECTS_ROOM_BACKGROUND_ENTITIES - 1), 0)
    factors = {k: v for k, v in record.items() if k not in ("image", "mask")}
    return [(record["image"], label.astype(np.uint8), factors)]


def source_files(tfrecords_path: str) -> list[str]:
    """The file, or the sorted files matching a glob (sharded releases such as CATER's);
    FileNotFoundError when there is none."""
    if os.path.isfile(tfrecords_path):
        return [tfrecords_path]
    if not glob.has_magic(tfrecords_path):
        raise MissingDatasetError(f"TFRecord file {tfrecords_path} does not exist")
    matches = sorted(p for p in glob.glob(tfrecords_path) if os.path.isfile(p))
    if not matches:
        raise MissingDatasetError(f"TFRecord pattern {tfrecords_path} matches no file")
    return matches


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
    cater_frames: Sequence[int] = CATER_FRAMES,
) -> str:
    """Convert an official file (or the glob of its shards) into ``<root>/<dataset>``.

    Args:
        dataset: a key of ``BUILTIN_DATASETS`` with an official format.
        tfrecords_path: the file, or a glob of its shards (read in sorted order).
        root: ``DATASETS.ROOT``.
        test_size, train_records: the split (module docstring).
        max_examples: convert only the first N records (CATER: videos; CLEVR: keep at most N
            training scenes, the test scenes unchanged).
        overwrite: replace an existing folder.
        progress: show a tqdm progress bar of records read.
        cater_frames: CATER: the frames of each video taken as examples (0..32).

    Returns:
        The dataset folder.

    Raises:
        KeyError: an unknown dataset; FileNotFoundError: no file; TFRecordError: a corrupt
        file or one of another dataset; ValueError: a generated-only dataset, bad
        ``cater_frames``, a CLEVR file with no record after ``train_records``. Nothing is
        written then.
    """
    if dataset not in BUILTIN_DATASETS:
        raise KeyError(f"unknown built-in dataset {dataset!r}; known: {list(BUILTIN_DATASETS)}")
    spec = BUILTIN_DATASETS[dataset]
    fmt_name = spec.official_format
    if fmt_name is None:
        raise DatasetError(
            f"dataset {dataset!r} has no official file to convert; generate it instead "
            f"(tools/prepare_data.py --dataset {dataset})"
        )
    frames = tuple(int(t) for t in cater_frames)
    cater = fmt_name == "cater_with_masks"
    last = tfrecords.CATER_FRAMES_PER_VIDEO - 1
    valid = frames and len(set(frames)) == len(frames) and set(frames) <= set(range(last + 1))
    if cater and not valid:
        raise DatasetError(f"cater_frames must be distinct frames in 0..{last}, got {cater_frames}")
    files = source_files(tfrecords_path)
    started = time.time()
    by_records = spec.split_by_records  # CLEVR
    records = ((p, i, r) for p in files for i, r in enumerate(tfrecords.iter_records(p)))
    num = {"train": 0, "test": 0}
    read = rejected = 0
    bar = tqdm(
        total=train_records if by_records else max_examples,
        desc=f"convert {dataset}",
        unit="rec",
        disable=not progress,
    )
    # Under the lock and inside the writer: an error leaves no folder, and no other process
    # prepares the same dataset meanwhile.
    with dataset_lock(root, dataset), DatasetWriter(root, dataset, overwrite) as writer:
        with contextlib.closing(bar):
            for path, index, payload in records:
                part = "train" if not by_records or read < train_records else "test"
                if (part == "test" and num["test"] >= test_size) or (
                    not by_records and max_examples is not None and read >= max_examples
                ):
                    break
                read += 1
                bar.update(1)
                if by_records and part == "train" and max_examples is not None:
                    if num["train"] >= max_examples:
                        continue  # enough training scenes: skip to the test records unparsed
                record = tfrecords.parse_official(payload, fmt_name, f"{path} record {index}")
                if spec.max_visible is not None and record["visibility"].sum() > spec.max_visible:
                    rejected += 1
                    continue
                for image, label, factors in _examples(record, fmt_name, frames):
                    writer.add(image, label, factors)
                    num[part] += 1
        if not by_records:
            # The test part: the last test_size examples, whole records (CATER: videos).
            per_record = len(frames) if cater else 1
            num["test"] = min(math.ceil(test_size / per_record) * per_record, writer.count)
            num["train"] = writer.count - num["test"]
        elif num["test"] == 0:
            raise DatasetError(
                f"{tfrecords_path}: no scene for the test split after the first "
                f"{train_records} records (the file has {read}); lower "
                "train_records (--train-records, DATASETS.CLEVR_TRAIN_RECORDS)"
            )
        elif num["test"] < test_size:
            logger.warning(
                "%s: only %d test scenes after record %d (wanted %d)",
                *(tfrecords_path, num["test"], train_records, test_size),
            )
        meta = {
            "dataset": dataset,
            "source": "official",
            "official_format": fmt_name,
            "source_file": os.path.abspath(tfrecords_path),
            "source_file_bytes": sum(os.path.getsize(f) for f in files),
            "records_read": read,
            "records_rejected_by_filter": rejected,
            "filter": None
            if spec.max_visible is None
            else f"sum(visibility) <= {spec.max_visible:g}",
            "train_records": train_records if by_records else None,
            "max_examples": max_examples,
            "num_train": num["train"],
            "num_test": num["test"],
            "crop": list(spec.crop) if spec.crop else None,
            "label_map": "argmax over the official entity masks; "
            + (ROOM_LABELS if fmt_name == "objects_room" else "0 = background"),
            **({"source_files": [os.path.abspath(f) for f in files]} if len(files) > 1 else {}),
            **({"frames_per_video": list(frames)} if cater else {}),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(time.time() - started, 1),
        }
        path = writer.commit(meta)
    logger.info("wrote %s: %d train + %d test examples", path, num["train"], num["test"])
    return path
