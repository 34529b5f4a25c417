"""The on-disk format of a prepared built-in dataset, shared by the reader (``lib.data``) and
the writer (``lib.prepare``).

Format version 1, one folder per dataset, ``<root>/<dataset>/``::

    images.npy          uint8 (N, H, W, 3)  RGB frames as stored by the source (CLEVR 240x320)
    masks.npy           uint8 (N, H, W)     label maps, 0 = background, k = entity k
    factors/<name>.npy  (N, ...)            per-example generative factors (float32 or uint8)
    meta.json           provenance, counts, split sizes, crop, format version

Examples are in source order with the held-out test examples LAST: ``<name>_test`` is the last
``meta["num_test"]`` examples (recorded at preparation), ``<name>_train`` the rest, plain
``<name>`` all of them. The ``.npy`` files load memory-mapped, so opening a dataset is instant
and loader workers share the page cache. A folder is written under a temporary name and
renamed into place when complete, so a folder with ``meta.json`` is complete.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import numpy as np

from lib import spec
from lib.errors import DatasetError, MissingDatasetError
from lib.spec import FACTOR_MAPPINGS

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
# The official IODINE / multi_object_datasets CLEVR crop of the 240x320 frame, (row0, row1,
# col0, col1): rows 29:221, cols 64:256. The one definition in the repository.
CLEVR_CROP = (29, 221, 64, 256)
# Test split of a folder whose meta.json predates ``num_test`` (the default test size then).
LEGACY_TEST_SIZE = 320


@dataclass(frozen=True)
class BuiltinSpec:
    """A built-in dataset.

    Attributes:
        official_format: key of ``lib.prepare.tfrecords.OFFICIAL_FORMATS`` of the file it
            converts from, or None for a dataset that is only generated (sprites).
        crop: ``(row0, row1, col0, col1)`` applied when loading, or None (centre square crop).
        max_visible: keep only records with sum(visibility) <= this (CLEVR6: 7), or None.
        split_by_records: CLEVR rule: training part = the first ``train_records`` raw records
            (filtered), test part = the next ``test_size`` filtered scenes.
    """

    official_format: str | None
    crop: tuple[int, int, int, int] | None = None
    max_visible: float | None = None
    split_by_records: bool = False


# A paper name (``clevr6``, ...) means the official data, converted from its TFRecords; it is
# never generated. Its procedural stand-in has a name of its own (``<paper name>_synth``), so
# metric keys, TensorBoard tags and output files say which data was used.
BUILTIN_DATASETS: dict[str, BuiltinSpec] = {
    "tetrominoes": BuiltinSpec("tetrominoes"),
    "multi_dsprites": BuiltinSpec("multi_dsprites_colored_on_grayscale"),
    "clevr6": BuiltinSpec("clevr_with_masks", CLEVR_CROP, 7.0, True),
    "clevr10": BuiltinSpec("clevr_with_masks", CLEVR_CROP, None, True),
    # Official only (no generator): lib/prepare/official.py says how their labels and frames
    # are taken (objects_room: the four background entities merged into 0; cater: frames).
    "objects_room": BuiltinSpec("objects_room"),
    "cater": BuiltinSpec("cater_with_masks"),
    "tetrominoes_synth": BuiltinSpec(None),
    "multi_dsprites_synth": BuiltinSpec(None),
    "clevr6_synth": BuiltinSpec(None, CLEVR_CROP),
    "clevr10_synth": BuiltinSpec(None, CLEVR_CROP),
    "sprites": BuiltinSpec(None),
    "sprites5": BuiltinSpec(None),
}
# Facts kept in lib.spec, re-exported for lib.prepare and the tests.
SYNTH_OF, builtin_of = spec.SYNTH_OF, spec.builtin_of
FACTOR_FAMILY, factor_mapping = spec.DATASET_FACTOR_FAMILY, spec.factor_mapping


def released_factors(
    dataset: str, source: str, stored: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The released factor inputs of one example from the arrays its folder stores.

    Categorical factors are labels (one-hot is the regressor's), angles radians. CLEVR: the
    release feeds ``color`` as ``size`` (a bug in its data.py); the real ``size`` is used here.
    Generated CLEVR stores 0-based indices with -1 for background/padding; they are shifted by
    one to the official layout (0 = none). ``position`` is ``pixel_coords`` (CLEVR) or (x, y)
    (Tetrominoes).

    Args:
        dataset: the built-in dataset (``clevr6``, ``multi_dsprites``, ``tetrominoes``, ...).
        source: ``meta["source"]``: ``"official"`` or ``"generated"``.
        stored: ``{name: (L, ...) array}`` as stored in ``factors/<name>.npy`` for the example.

    Returns:
        ``{name: float32 (L, n)}`` for every mapped name, plus ``visibility`` (L,).

    Raises:
        ValueError: the dataset has no mapping, or a needed stored factor is missing.
    """
    family = FACTOR_FAMILY.get(dataset)
    if family is None:
        raise ValueError(f"dataset {dataset!r} has no factor mapping")

    def get(key: str) -> np.ndarray:
        if key not in stored:
            raise ValueError(
                f"dataset {dataset!r}: factors/{key}.npy is missing (stored: {sorted(stored)})"
            )
        array = np.asarray(stored[key], dtype=np.float32)
        return array.reshape(array.shape[0], -1)

    out = {"visibility": get("visibility")[:, 0]}
    if family == "clevr":
        shift = 1.0 if source == "generated" else 0.0
        for key in ("color", "shape", "size"):
            out[key] = get(key) + shift
        out["position"] = get("pixel_coords")
    elif family == "tetrominoes":
        out["position"] = np.concatenate([get("x"), get("y")], axis=1)
        out["color"], out["shape"] = get("color"), get("shape")
    else:
        for key, _, _ in FACTOR_MAPPINGS[family]:
            out[key] = get(key)
    return out


def dataset_dir(root: str, dataset: str) -> str:
    """Folder of a prepared built-in dataset: ``<root>/<dataset>``."""
    return os.path.join(root, dataset)


def prepare_command(dataset: str, root: str) -> str:
    """The ``tools/prepare_data.py`` command that generates a built-in dataset (an official
    one is converted with ``--tfrecords FILE`` added)."""
    return f"python tools/prepare_data.py --dataset {dataset} --root {root}"


def load_meta(path: str) -> dict:
    """Read and check ``<path>/meta.json`` of a prepared dataset.

    Args:
        path: the dataset folder.

    Returns:
        The metadata dict.

    Raises:
        MissingDatasetError: no ``meta.json`` (the message says how to prepare it).
        DatasetError: not a JSON object, an unsupported format version, missing keys, or a
            ``num_test`` that is not an integer in ``[0, num_examples]`` (the message names
            the file and says to prepare the dataset again).
    """
    meta_path = os.path.join(path, "meta.json")
    command = prepare_command(os.path.basename(path), os.path.dirname(path))
    if not os.path.isfile(meta_path):
        raise MissingDatasetError(
            f"{path} exists but has no meta.json: it was not written by tools/prepare_data.py "
            f"(or is incomplete); remove it and prepare the dataset again (`{command} "
            "--overwrite`)"
        )
    again = f"; prepare the dataset again (`{command} --overwrite`)"
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{meta_path}: not valid JSON ({exc}){again}") from exc
    if not isinstance(meta, dict):
        raise DatasetError(f"{meta_path}: a {type(meta).__name__}, not a JSON object{again}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise DatasetError(
            f"{meta_path}: format_version {meta.get('format_version')!r}, this code reads "
            f"{FORMAT_VERSION}{again}"
        )
    for key in ("num_examples", "source", "image_shape"):
        if key not in meta:
            raise DatasetError(f"{meta_path}: missing key {key!r}{again}")
    n = meta["num_examples"]
    if not _is_count(n) or not isinstance(meta["image_shape"], list):
        raise DatasetError(f"{meta_path}: bad num_examples or image_shape{again}")
    num_test = meta.get("num_test")
    if num_test is not None and not (_is_count(num_test) and num_test <= n):
        raise DatasetError(
            f"{meta_path}: num_test {num_test!r} is not an integer in [0, num_examples = {n}]"
            + again
        )
    return meta


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def recorded_test_size(meta: dict, path: str) -> int:
    """Size of the test split of the prepared dataset at ``path`` (``meta`` its ``load_meta``):
    ``meta["num_test"]``; for a folder prepared before it was recorded,
    ``min(LEGACY_TEST_SIZE, num_examples)`` with a warning naming the folder."""
    if meta.get("num_test") is not None:
        return int(meta["num_test"])
    logger.warning(
        "%s/meta.json does not record num_test (prepared by an older version): taking the "
        "last %d examples as the test split; prepare the dataset again to record it",
        path,
        LEGACY_TEST_SIZE,
    )
    return min(LEGACY_TEST_SIZE, int(meta["num_examples"]))
