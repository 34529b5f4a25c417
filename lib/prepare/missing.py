"""``prepare_missing``: what the tools call before they build datasets.

Reading (``lib.data``) never writes. A tool that is about to read built-in datasets calls
``prepare_missing(cfg, names)`` first; it generates the built-in folders that are missing and
have a generator, loudly, and leaves everything else to the reader's own errors.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable

from lib.data.format import SYNTH_OF, builtin_of, dataset_dir, prepare_command
from lib.errors import MissingDatasetError
from lib.prepare.generation import generate_command, generate_under_lock
from lib.prepare.generators import GENERATORS
from lib.prepare.lock import dataset_lock

logger = logging.getLogger(__name__)

# Paper dataset -> the official file it is converted from (gs://multi-object-datasets/...).
OFFICIAL_FILES = {
    "tetrominoes": "tetrominoes/tetrominoes_train.tfrecords",
    "multi_dsprites": "multi_dsprites/multi_dsprites_colored_on_grayscale.tfrecords",
    "clevr6": "clevr_with_masks/clevr_with_masks_train.tfrecords",
    "clevr10": "clevr_with_masks/clevr_with_masks_train.tfrecords",
}


class MissingDataError(MissingDatasetError):
    """The official data a paper dataset name asks for has not been prepared (or a folder of
    that name holds something else); the message gives the commands that prepare it."""


def official_data_message(dataset: str, root: str, problem: str) -> str:
    """The one message for missing official data: download, convert, or use the stand-in.

    Args:
        dataset: the paper dataset (a key of ``OFFICIAL_FILES``).
        root: ``DATASETS.ROOT``.
        problem: what was found, e.g. ``"data/clevr6 does not exist"``.

    Returns:
        A multi-line message with the exact commands.
    """
    remote = OFFICIAL_FILES[dataset]
    local = os.path.basename(remote)
    synth = SYNTH_OF[dataset]
    return (
        f"official dataset {dataset!r} not found: {problem}. A paper dataset name means the "
        "official data; it is never generated. Download and convert it:\n"
        f"  gsutil cp gs://multi-object-datasets/{remote} .\n"
        f"  python tools/prepare_data.py --dataset {dataset} --tfrecords {local} --root {root}\n"
        "or use the generated stand-in instead (add to the command line):\n"
        f"  DATASETS.TRAIN {synth}_train DATASETS.TEST {synth}_test"
    )


def check_official(cfg, names: Iterable[str]) -> None:
    """Stop before any work when a paper dataset among ``names`` is not prepared.

    Args:
        cfg: the config (``DATASETS.ROOT``).
        names: dataset names.

    Raises:
        MissingDataError: a paper dataset's folder is missing, or holds a generated stand-in
            (written by an earlier version under the paper name).
    """
    root = str(cfg.DATASETS.ROOT)
    for name in names:
        dataset = builtin_of(name)
        if dataset not in OFFICIAL_FILES:
            continue
        path = dataset_dir(root, dataset)
        if not _check_found(path, dataset, root):
            raise MissingDataError(official_data_message(dataset, root, f"{path} does not exist"))
        with open(os.path.join(path, "meta.json"), encoding="utf-8") as f:
            source = json.load(f).get("source")
        if source != "official":
            raise MissingDataError(
                official_data_message(
                    dataset,
                    root,
                    f"{path} holds {source!r} data, not the official file's (an earlier version "
                    f"generated stand-ins under the paper name: rename it to "
                    f"{dataset_dir(root, SYNTH_OF[dataset])} to keep it as the stand-in)",
                )
            )


def _check_found(path: str, dataset: str, root: str) -> bool:
    """True when ``path`` is a complete prepared folder, False when it does not exist."""
    if os.path.isfile(os.path.join(path, "meta.json")):
        return True
    if os.path.exists(path):
        raise MissingDatasetError(
            f"{path} exists but has no meta.json: it was not written by tools/prepare_data.py "
            "(or is incomplete); remove it and prepare the dataset again "
            f"(`{prepare_command(dataset, root)} --overwrite`)"
        )
    return False


def prepare_missing(cfg, names: Iterable[str]) -> list[str]:
    """Generate the missing built-in datasets among ``names``; every rank may call it.

    First every paper dataset (``clevr6_train``, ``tetrominoes``, ...) must be prepared from
    the official files (``check_official``): otherwise nothing is generated and the one
    message says how to get them. Then for each name that reads a generated built-in set
    (``clevr6_synth_train``, ``sprites``, ...; other names, ``folder:<path>`` included, are
    skipped): an existing folder is used as it is, whatever its sizes; a missing one is
    generated with
    ``DATASETS.GENERATE_SIZE`` training examples from ``DATASETS.GENERATE_SEED`` plus
    ``DATASETS.TEST_SIZE`` test examples, after a loud warning naming the folder and the
    command that does the same by hand. One process generates under the dataset's file lock;
    the others block on it and then find the folder complete.

    Args:
        cfg: the config (``DATASETS.ROOT``, ``GENERATE_SIZE``, ``GENERATE_SEED``,
            ``TEST_SIZE``).
        names: dataset names, e.g. ``cfg.DATASETS.TRAIN + cfg.DATASETS.TEST``.

    Returns:
        The built-in folders prepared or found, once each, in the order of ``names``.

    Raises:
        MissingDataError: a paper dataset is not prepared from its official file.
        FileNotFoundError: a folder without ``meta.json``.
    """
    names = list(names)
    check_official(cfg, names)
    root = str(cfg.DATASETS.ROOT)
    folders: list[str] = []
    for name in names:
        dataset = builtin_of(name)
        if dataset is None:
            continue
        path = dataset_dir(root, dataset)
        if path in folders:
            continue
        if not _check_found(path, dataset, root):
            if dataset not in GENERATORS:  # an official set without a paper name's entry
                raise MissingDataError(
                    f"dataset folder {path} does not exist and {dataset!r} has no generator; "
                    f"prepare it with python tools/prepare_data.py --dataset {dataset} "
                    f"--tfrecords FILE --root {root}"
                )
            with dataset_lock(root, dataset):
                # Another process may have made it while this one waited for the lock.
                if not _check_found(path, dataset, root):
                    _generate_loudly(cfg, dataset, root, path)
        folders.append(path)
    return folders


def _generate_loudly(cfg, dataset: str, root: str, path: str) -> None:
    size = int(cfg.DATASETS.GENERATE_SIZE)
    seed = int(cfg.DATASETS.GENERATE_SEED)
    test = int(cfg.DATASETS.TEST_SIZE)
    paper = next((p for p, synth in SYNTH_OF.items() if synth == dataset), None)
    note = (
        f" This is a procedural stand-in, not the official data (that is {paper!r}, converted "
        "with tools/prepare_data.py --tfrecords FILE)."
        if paper
        else ""
    )
    logger.warning(
        "!!! Dataset folder %s is missing: GENERATING %s now (%d training + %d test "
        "examples, seed %d).%s To do this by hand: %s",
        path,
        dataset,
        size,
        test,
        seed,
        note,
        generate_command(dataset, root, size, seed, test),
    )
    generate_under_lock(
        dataset,
        root,
        num_examples=size,
        seed=seed,
        test_size=test,
        overwrite=False,
        progress=True,
        workers=None,
    )
