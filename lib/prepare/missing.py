"""``prepare_missing``: what the tools call before they build datasets.

Reading (``lib.data``) never writes. A tool that is about to read built-in datasets calls
``prepare_missing(cfg, names)`` first; it generates the built-in folders that are missing and
have a generator, loudly, and leaves everything else to the reader's own errors.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

from lib.data.format import builtin_of, dataset_dir, prepare_command
from lib.prepare.generation import generate_command, generate_under_lock
from lib.prepare.generators import GENERATORS
from lib.prepare.lock import dataset_lock

logger = logging.getLogger(__name__)


def _check_found(path: str, dataset: str, root: str) -> bool:
    """True when ``path`` is a complete prepared folder, False when it does not exist."""
    if os.path.isfile(os.path.join(path, "meta.json")):
        return True
    if os.path.exists(path):
        raise FileNotFoundError(
            f"{path} exists but has no meta.json: it was not written by tools/prepare_data.py "
            "(or is incomplete); remove it and prepare the dataset again "
            f"(`{prepare_command(dataset, root)} --overwrite`)"
        )
    return False


def prepare_missing(cfg, names: Iterable[str]) -> list[str]:
    """Generate the missing built-in datasets among ``names``; every rank may call it.

    For each name that reads a built-in dataset (``clevr6_train``, ``tetrominoes``, ...; other
    names, ``folder:<path>`` included, are skipped): an existing folder is used as it is,
    whatever its sizes; a missing one with a generator is generated with
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
        FileNotFoundError: a missing built-in folder without a generator (the message names
            the ``--tfrecords`` command), or a folder without ``meta.json``.
    """
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
            if dataset not in GENERATORS:
                raise FileNotFoundError(
                    f"dataset folder {path} does not exist and {dataset!r} has no generator; "
                    f"prepare it with tools/prepare_data.py --dataset {dataset} --tfrecords "
                    f"FILE --root {root}"
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
    logger.warning(
        "!!! Dataset folder %s is missing: GENERATING %s now (%d training + %d test "
        "examples, seed %d). This is a procedural stand-in, not the official data. To do "
        "this by hand: %s   (or convert the official file with --tfrecords FILE)",
        path,
        dataset,
        size,
        test,
        seed,
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
