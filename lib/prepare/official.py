"""Convert an official ``multi_object_datasets`` TFRecord file into a prepared dataset folder.

Splits: Tetrominoes and Multi-dSprites have no official split: the first records are taken in
order and the last ``test_size`` of them form the test part. CLEVR (``clevr6``, ``clevr10``):
the training part is the first ``train_records`` raw records (70K, ``DATASETS.
CLEVR_TRAIN_RECORDS``) after the object filter, the test part the next ``test_size`` scenes
that pass the filter. ``clevr6`` keeps scenes with sum(visibility) <= 7 (at most 6 objects plus
the background); the released IODINE filter keeps exactly 5 objects by a bug and is not copied.
``meta.json`` records ``num_test``, which the reader's ``_test`` split follows.

Objects Room (``objects_room``, ``objects_room_train.tfrecords``, 1M scenes, no official split:
first records in order, the last ``test_size`` the test part): the masks have 7 entities, the
first four the sky, the floor and the two halves of the wall (multi_object_datasets README).
The label map is the argmax over them with those four background entities merged into label 0
and object entity k >= 4 labelled k - 3, so 0 is the background as for every other dataset (and
``fg_ari`` ignores the whole room, as the object-centric library's ``num_background_objects: 4``
does).

CATER with masks (``cater``): videos of 33 frames of 64x64 with 11 entity masks (entity 0 the
background), ZLIB-compressed and sharded (``cater_with_masks_train.tfrecords-*-of-*``: give the
glob, quoted, as the file). IODINE is an image model: each video contributes the frames
``CATER_FRAMES`` (0, 8, 16, 24, 32 by default: five views of its motion, one every 8 frames) as
consecutive examples, with ``camera_matrix`` (4, 4) and ``object_positions`` (11, 3) of that frame
as factors. ``max_examples`` counts videos, and the test part is whole videos: the last
ceil(test_size / frames) videos converted, so no video has frames on both sides of the split.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

import lib.prepare.tfrecords as tfrecords
from lib.data.format import BUILTIN_DATASETS, BuiltinSpec
from lib.errors import DatasetError, MissingDatasetError
from lib.prepare.lock import dataset_lock
from lib.prepare.writer import DatasetWriter

logger = logging.getLogger(__name__)


# CATER: frames of each 33-frame video taken as examples (one every 8 frames, first and last
# included).
CATER_FRAMES: tuple[int, ...] = (0, 8, 16, 24, 32)
# Objects Room: entities 0..3 are the sky, the floor and the two wall halves.
OBJECTS_ROOM_BACKGROUND_ENTITIES = 4

LABEL_MAP_TEXT = {
    "objects_room": "argmax over the official entity masks; the background entities 0-3 (sky, "
    "floor, two wall halves) merged into 0, object entity k >= 4 labelled k - 3",
}
DEFAULT_LABEL_MAP_TEXT = "argmax over the official entity masks; 0 = background"


def _official_example(record: dict[str, np.ndarray], fmt_name: str) -> tuple:
    """Image, label map and factors of one checked official record (not CATER)."""
    mask = record["mask"][..., 0]
    if fmt_name.startswith("multi_dsprites"):
        mask = np.moveaxis(mask, 2, 0)  # stored (H, W, E): the official reader transposes
    # Label = entity whose mask is largest (masks are 0/255); entry 0 is the background.
    label = np.argmax(mask, axis=0)
    if fmt_name == "objects_room":
        # The room (sky, floor, walls) is the background: one label, 0, like everywhere else.
        label = np.maximum(label - (OBJECTS_ROOM_BACKGROUND_ENTITIES - 1), 0)
    label = label.astype(np.uint8)
    factors = {k: v for k, v in record.items() if k not in ("image", "mask")}
    return record["image"], label, factors


def _official_examples(
    record: dict[str, np.ndarray], fmt_name: str, frames: Sequence[int]
) -> list[tuple]:
    """The examples (image, label map, factors) of one record: one, or CATER's frames."""
    if fmt_name != "cater_with_masks":
        return [_official_example(record, fmt_name)]
    positions = np.transpose(record["object_positions"], (1, 0, 2))  # (E, T, 3) -> (T, E, 3)
    out = []
    for t in frames:
        label = np.argmax(record["mask"][t, ..., 0], axis=0).astype(np.uint8)  # (E, H, W)
        factors = {"camera_matrix": record["camera_matrix"][t], "object_positions": positions[t]}
        out.append((record["image"][t], label, factors))
    return out


def source_files(tfrecords_path: str) -> list[str]:
    """The files of a ``--tfrecords`` argument: the file, or the sorted matches of a glob
    (sharded releases such as CATER's ``cater_with_masks_train.tfrecords-*-of-*``).

    Args:
        tfrecords_path: a file or a glob pattern.

    Returns:
        The files, in order.

    Raises:
        FileNotFoundError: no such file, or a pattern matching none.
    """
    if os.path.isfile(tfrecords_path):
        return [tfrecords_path]
    if glob.has_magic(tfrecords_path):
        matches = sorted(p for p in glob.glob(tfrecords_path) if os.path.isfile(p))
        if matches:
            return matches
        raise MissingDatasetError(f"TFRecord pattern {tfrecords_path} matches no file")
    raise MissingDatasetError(f"TFRecord file {tfrecords_path} does not exist")


def _payloads(files: Sequence[str]) -> Iterator[tuple[str, int, bytes]]:
    """(file, record index in it, payload) over the files in order."""
    for path in files:
        for index, payload in enumerate(tfrecords.iter_records(path)):
            yield path, index, payload


@dataclass(frozen=True)
class _Job:
    """What one conversion reads and how it splits it (the checked arguments of
    ``convert_official``)."""

    dataset: str
    spec: BuiltinSpec
    fmt_name: str
    tfrecords_path: str
    files: tuple[str, ...]
    frames: tuple[int, ...]
    test_size: int
    max_examples: int | None
    train_records: int


@dataclass
class _Counts:
    """Running counts of one conversion: examples written per part, records read and
    rejected by the object filter."""

    num_train: int = 0
    num_test: int = 0
    records_read: int = 0
    rejected: int = 0


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
    """Convert an official ``multi_object_datasets`` file into ``<root>/<dataset>``.

    Args:
        dataset: a key of ``BUILTIN_DATASETS``.
        tfrecords_path: the TFRecord file (Tetrominoes, Multi-dSprites colored_on_grayscale,
            CLEVR with masks for clevr6/clevr10, Objects Room train, CATER with masks), or a
            glob of its shards (read in sorted order).
        root: ``DATASETS.ROOT``.
        test_size: examples of the test part (Tetrominoes/Multi-dSprites: the last ones of
            those converted; CLEVR: the filtered scenes after ``train_records``).
        max_examples: Tetrominoes/Multi-dSprites/Objects Room/CATER: convert only the first N
            records (CATER: videos). CLEVR: keep at most N training scenes (the test scenes are
            unchanged).
        train_records: CLEVR: raw records that make up the training part.
        overwrite: replace an existing folder.
        progress: show a tqdm progress bar of records read.
        cater_frames: CATER: the frames of each video taken as examples (0..32).

    Returns:
        The dataset folder.

    Raises:
        KeyError: an unknown dataset.
        FileNotFoundError: no such file, or a glob matching none.
        tfrecords.TFRecordError: a corrupt file or a file of another dataset (nothing written).
        ValueError: CLEVR file with no record after ``train_records`` (no test scenes).
    """
    spec, fmt_name = _official_spec(dataset)
    frames = _checked_frames(fmt_name, cater_frames)
    job = _Job(
        dataset=dataset,
        spec=spec,
        fmt_name=fmt_name,
        tfrecords_path=tfrecords_path,
        files=tuple(source_files(tfrecords_path)),
        frames=frames,
        test_size=test_size,
        max_examples=max_examples,
        train_records=train_records,
    )
    started = time.time()
    # Under the lock and inside the writer: any error leaves no folder (the writer removes
    # its temporary one), and no other process prepares the same dataset meanwhile.
    with dataset_lock(root, dataset), DatasetWriter(root, dataset, overwrite) as writer:
        counts = _write_records(job, writer, progress)
        _finish_split(job, counts, writer.count)
        path = writer.commit(_official_meta(job, counts, started))
    logger.info("wrote %s: %d train + %d test examples", path, counts.num_train, counts.num_test)
    return path


def _official_spec(dataset: str) -> tuple[BuiltinSpec, str]:
    """The spec of a built-in dataset that is converted from an official file.

    Args:
        dataset: a key of ``BUILTIN_DATASETS``.

    Returns:
        ``(spec, official format name)``.

    Raises:
        KeyError: an unknown dataset.
        DatasetError: a dataset that is only generated (no official file).
    """
    if dataset not in BUILTIN_DATASETS:
        raise KeyError(f"unknown built-in dataset {dataset!r}; known: {list(BUILTIN_DATASETS)}")
    spec = BUILTIN_DATASETS[dataset]
    if spec.official_format is None:
        raise DatasetError(
            f"dataset {dataset!r} has no official file to convert; generate it instead "
            f"(tools/prepare_data.py --dataset {dataset})"
        )
    return spec, spec.official_format


def _checked_frames(fmt_name: str, cater_frames: Sequence[int]) -> tuple[int, ...]:
    """``cater_frames`` as a tuple of ints, checked when the file is CATER's.

    Args:
        fmt_name: the official format name.
        cater_frames: the frames of each video taken as examples.

    Returns:
        The frames (ignored for formats other than ``cater_with_masks``).

    Raises:
        DatasetError: CATER with no frames, repeated frames or frames outside the video.
    """
    frames = tuple(int(t) for t in cater_frames)
    if fmt_name == "cater_with_masks" and (
        not frames
        or len(set(frames)) != len(frames)
        or not all(0 <= t < tfrecords.CATER_FRAMES_PER_VIDEO for t in frames)
    ):
        raise DatasetError(
            f"cater_frames must be distinct frames in 0..{tfrecords.CATER_FRAMES_PER_VIDEO - 1}, "
            f"got {cater_frames}"
        )
    return frames


def _write_records(job: _Job, writer: DatasetWriter, progress: bool) -> _Counts:
    """Read the records in order and write the examples of those kept.

    CLEVR (``split_by_records``): the first ``train_records`` records are the training part
    (at most ``max_examples`` scenes kept), then reading stops after ``test_size`` test scenes.
    Other datasets: the first ``max_examples`` records, all counted as training here (the
    test part is cut from the end by ``_finish_split``).

    Args:
        job: the conversion.
        writer: the open dataset writer.
        progress: show a tqdm bar of records read.

    Returns:
        The counts (``num_train``/``num_test`` as written, before ``_finish_split``).
    """
    spec, counts = job.spec, _Counts()
    total = job.train_records if spec.split_by_records else job.max_examples
    bar = tqdm(total=total, desc=f"convert {job.dataset}", unit="rec", disable=not progress)
    with contextlib.closing(bar):
        for path, index, payload in _payloads(job.files):
            if spec.split_by_records:
                in_train = counts.records_read < job.train_records
                if not in_train and counts.num_test >= job.test_size:
                    break
            else:
                in_train = True
                if job.max_examples is not None and counts.records_read >= job.max_examples:
                    break
            where = f"{path} record {index}"
            counts.records_read += 1
            bar.update(1)
            if spec.split_by_records and in_train and job.max_examples is not None:
                if counts.num_train >= job.max_examples:
                    continue  # enough training scenes: skip to the test records unparsed
            record = tfrecords.parse_official(payload, job.fmt_name, where)
            if spec.max_visible is not None:
                if float(record["visibility"].sum()) > spec.max_visible:
                    counts.rejected += 1
                    continue
            for image, label, factors in _official_examples(record, job.fmt_name, job.frames):
                writer.add(image, label, factors)
                if in_train:
                    counts.num_train += 1
                else:
                    counts.num_test += 1
    return counts


def _finish_split(job: _Job, counts: _Counts, written: int) -> None:
    """Settle ``counts.num_train`` and ``counts.num_test`` once every record is written.

    CLEVR: the parts are as read; no test scene is an error, fewer than asked a warning.
    Others: the test part is the last ``test_size`` examples rounded up to whole records
    (CATER: whole videos, so no video has frames on both sides of the split).

    Args:
        job: the conversion.
        counts: the counts from ``_write_records``, updated in place.
        written: examples written in all.

    Raises:
        DatasetError: CLEVR with no scene after the first ``train_records`` records.
    """
    if job.spec.split_by_records:
        if counts.num_test == 0:
            raise DatasetError(
                f"{job.tfrecords_path}: no scene for the test split after the first "
                f"{job.train_records} records (the file has {counts.records_read}); lower "
                "train_records (--train-records, DATASETS.CLEVR_TRAIN_RECORDS)"
            )
        if counts.num_test < job.test_size:
            logger.warning(
                "%s: only %d test scenes after record %d (wanted %d)",
                job.tfrecords_path,
                counts.num_test,
                job.train_records,
                job.test_size,
            )
        return
    per_record = len(job.frames) if job.fmt_name == "cater_with_masks" else 1
    counts.num_test = min(math.ceil(job.test_size / per_record) * per_record, written)
    counts.num_train = written - counts.num_test


def _official_meta(job: _Job, counts: _Counts, started: float) -> dict:
    """The provenance recorded in ``meta.json`` (the writer adds the counts and shapes).

    Args:
        job: the conversion.
        counts: the final counts.
        started: ``time.time()`` when the conversion started.

    Returns:
        The meta dict, keys in the order they are written.
    """
    spec, fmt_name, files = job.spec, job.fmt_name, job.files
    filter_text = None
    if spec.max_visible is not None:
        filter_text = f"sum(visibility) <= {spec.max_visible:g}"
    return {
        "dataset": job.dataset,
        "source": "official",
        "official_format": fmt_name,
        "source_file": os.path.abspath(job.tfrecords_path),
        "source_file_bytes": sum(os.path.getsize(f) for f in files),
        "records_read": counts.records_read,
        "records_rejected_by_filter": counts.rejected,
        "filter": filter_text,
        "train_records": job.train_records if spec.split_by_records else None,
        "max_examples": job.max_examples,
        "num_train": counts.num_train,
        "num_test": counts.num_test,
        "crop": list(spec.crop) if spec.crop else None,
        "label_map": LABEL_MAP_TEXT.get(fmt_name, DEFAULT_LABEL_MAP_TEXT),
        **({"source_files": [os.path.abspath(f) for f in files]} if len(files) > 1 else {}),
        **({"frames_per_video": list(job.frames)} if fmt_name == "cater_with_masks" else {}),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.time() - started, 1),
    }
