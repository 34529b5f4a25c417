"""``prepare_missing``: what the tools call before they build datasets (reading never writes)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable

from lib.data.format import SYNTH_OF, builtin_of, dataset_dir, prepare_command
from lib.errors import MissingDatasetError
from lib.prepare.generation import generate_dataset
from lib.prepare.generators import GENERATORS
from lib.prepare.writer import dataset_lock

logger = logging.getLogger(__name__)

# Paper dataset -> the official file it is converted from (gs://multi-object-datasets/...).
OFFICIAL_FILES = {
    "tetrominoes": "tetrominoes/tetrominoes_train.tfrecords",
    "multi_dsprites": "multi_dsprites/multi_dsprites_colored_on_grayscale.tfrecords",
    "clevr6": "clevr_with_masks/clevr_with_masks_train.tfrecords",
    "clevr10": "clevr_with_masks/clevr_with_masks_train.tfrecords",
}


class MissingDataError(MissingDatasetError):
    """The official data a paper dataset name asks for is not prepared; the message gives
    the commands that prepare it."""


def _official_missing(dataset: str, root: str, problem: str) -> MissingDataError:
    remote = OFFICIAL_FILES[dataset]
    synth = SYNTH_OF[dataset]
    return MissingDataError(
        f"official dataset {dataset!r} not found: {problem}. A paper dataset name means the "
        "official data; it is never generated. Download and convert it:\n"
        f"  gsutil cp gs://multi-object-datasets/{remote} .\n"
        f"  python tools/prepare_data.py --dataset {dataset} --tfrecords "
        f"{os.path.basename(remote)} --root {root}\n"
        "or use the generated stand-in instead (add to the command line):\n"
        f"  DATASETS.TRAIN {synth}_train DATASETS.TEST {synth}_test"
    )


def _found(path: str, dataset: str, root: str) -> bool:
    """True for a complete prepared folder, False when none exists; an error otherwise."""
    if os.path.isfile(os.path.join(path, "meta.json")):
        return True
    if os.path.exists(path):
        raise MissingDatasetError(
            f"{path} exists but has no meta.json: it was not written by tools/prepare_data.py "
            "(or is incomplete); remove it and prepare the dataset again "
            f"(`{prepare_command(dataset, root)} --overwrite`)"
        )
    return False


def check_official(cfg, names: Iterable[str]) -> None:
    """Raise ``MissingDataError`` when a paper dataset among ``names`` is not prepared from
    its official file (missing, or a generated stand-in an earlier version wrote under the
    paper name)."""
    root = str(cfg.DATASETS.ROOT)
    for dataset in dict.fromkeys(map(builtin_of, names)):
        if dataset not in OFFICIAL_FILES:
            continue
        path = dataset_dir(root, dataset)
        if not _found(path, dataset, root):
            raise _official_missing(dataset, root, f"{path} does not exist")
        with open(os.path.join(path, "meta.json"), encoding="utf-8") as f:
            source = json.load(f).get("source")
        if source != "official":
            raise _official_missing(
                dataset,
                root,
                f"{path} holds {source!r} data, not the official file's (an earlier version "
                f"generated stand-ins under the paper name: rename it to "
                f"{dataset_dir(root, SYNTH_OF[dataset])} to keep it as the stand-in)",
            )


def prepare_missing(cfg, names: Iterable[str]) -> list[str]:
    """Generate the missing built-in datasets among ``names``; every rank may call it.

    Nothing is generated unless the paper datasets are prepared (``check_official``). A missing
    generated set is made after a loud warning with the equivalent command (``DATASETS.
    GENERATE_SIZE`` examples from ``GENERATE_SEED`` plus ``TEST_SIZE``), by one process under
    the dataset's lock while the others wait; an existing folder is used as it is.

    Returns:
        The built-in folders prepared or found, once each, in the order of ``names``.

    Raises:
        MissingDataError: official data not prepared, or a missing set with no generator.
        FileNotFoundError: a folder without ``meta.json``.
    """
    names = list(names)
    check_official(cfg, names)
    root = str(cfg.DATASETS.ROOT)
    folders: list[str] = []
    for dataset in filter(None, map(builtin_of, names)):
        path = dataset_dir(root, dataset)
        if path not in folders and not _found(path, dataset, root):
            if dataset not in GENERATORS:
                raise MissingDataError(
                    f"dataset folder {path} does not exist and {dataset!r} has no generator; "
                    f"prepare it with python tools/prepare_data.py --dataset {dataset} "
                    f"--tfrecords FILE --root {root}"
                )
            with dataset_lock(root, dataset):
                # Another process may have made it while this one waited for the lock.
                if not _found(path, dataset, root):
                    _generate_loudly(cfg, dataset, root, path)
        if path not in folders:
            folders.append(path)
    return folders


def _generate_loudly(cfg, dataset: str, root: str, path: str) -> None:
    size, seed = int(cfg.DATASETS.GENERATE_SIZE), int(cfg.DATASETS.GENERATE_SEED)
    test = int(cfg.DATASETS.TEST_SIZE)
    paper = next((p for p, synth in SYNTH_OF.items() if synth == dataset), None)
    logger.warning(
        "!!! Dataset folder %s is missing: GENERATING %s now (%d training + %d test examples, "
        "seed %d).%s To do this by hand: %s --num-examples %d --seed %d --test-size %d",
        *(path, dataset, size, test, seed),
        f" This is a procedural stand-in, not the official data (that is {paper!r}, converted "
        "with tools/prepare_data.py --tfrecords FILE)."
        if paper
        else "",
        *(prepare_command(dataset, root), size, seed, test),
    )
    generate_dataset(dataset, root, num_examples=size, seed=seed, test_size=test, locked=True)
