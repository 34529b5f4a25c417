"""Generate a built-in dataset with its procedural generator, on every core, resumably.

A generated set is ``num_train`` examples from ``seed``, then ``num_test`` from the independent
stream of ``derived_test_seed(seed)``. Chunks of ``GeneratorSpec.chunk_size`` examples of one
stream are written atomically to ``<root>/.<dataset>.partial/`` beside ``request.json``, then
copied in order through ``DatasetWriter``; an interrupted run leaves its chunks and the next run
of the same request resumes from them. Chunks of an indexable generator (CLEVR) are made in
``workers`` processes, a sequential stream in this process; either way a chunk holds the bytes
of one uninterrupted run, whatever ``workers`` and the interruptions.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import time
import zipfile
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from lib.data.format import BUILTIN_DATASETS, FORMAT_VERSION, dataset_dir
from lib.errors import DatasetError, DatasetExistsError, MissingDatasetError
from lib.prepare.generators import GeneratorSpec, generate_range, get_spec
from lib.prepare.writer import DatasetWriter, dataset_lock
from lib.utils.io import TMP_MARK, atomic_write_bytes, atomic_write_text

logger = logging.getLogger(__name__)

REQUEST_FILE = "request.json"


def derived_test_seed(seed: int) -> int:
    """The test part's seed: 32 bits of ``SeedSequence([seed, 0x7E57])``, an independent stream."""
    return int(np.random.SeedSequence([seed, 0x7E57]).generate_state(1, dtype=np.uint32)[0])


def available_cpus() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # pragma: no cover - macOS, Windows


def partial_dir(root: str, dataset: str) -> str:
    """Folder of the chunks of an unfinished generation: ``<root>/.<dataset>.partial``."""
    return os.path.join(root, f".{dataset}.partial")


class _Chunk(NamedTuple):
    """Examples ``start .. stop - 1`` of one stream ("train" or "test"), its chunk ``index``."""

    stream: str
    seed: int
    index: int
    start: int
    stop: int

    @property
    def file_name(self) -> str:
        return f"{self.stream}-{self.index:06d}.npz"


def _stack(items: list[dict], chunk: _Chunk, dataset: str) -> dict[str, np.ndarray]:
    """Arrays of a chunk file: ``image`` (n, H, W, 3), ``mask`` (n, H, W), ``factor.<name>``."""
    names = list(items[0].get("factors", {}))
    try:
        if any(list(item.get("factors", {})) != names for item in items):
            raise ValueError(f"not all have the factors {names}")
        arrays = {key: np.stack([item[key] for item in items]) for key in ("image", "mask")}
        for n in names:
            arrays[f"factor.{n}"] = np.stack([item["factors"][n] for item in items])
    except ValueError as exc:  # np.stack: arrays of several shapes
        raise DatasetError(
            f"generator of {dataset}: bad {chunk.stream} examples {chunk.start}..{chunk.stop - 1}"
            f" ({exc})"
        ) from exc
    return arrays


def _write_chunk(folder: str, chunk: _Chunk, arrays: dict[str, np.ndarray]) -> None:
    if not os.path.isdir(folder):
        # A worker that outlived its killed parent while a later run finished: writing would
        # bring the folder back with no one to remove it.
        raise MissingDatasetError(f"{folder} is gone: its generation has ended")
    atomic_write_bytes(os.path.join(folder, chunk.file_name), lambda f: np.savez(f, **arrays))


def _make_chunks(
    dataset: str, spec: GeneratorSpec, folder: str, chunks: list[_Chunk], on_chunk=None
) -> int:
    """Make and write consecutive chunks of one stream (also in a "spawn" worker process);
    returns the examples written."""
    first, last = chunks[0], chunks[-1]
    stream = generate_range(spec, dataset, first.seed, first.start, last.stop)
    position, written = first.start, 0
    for chunk in chunks:
        items = []
        for index in range(position, chunk.stop):
            item = next(stream, None)
            if item is None:
                raise DatasetError(
                    f"generator of {dataset} ended after {index} examples of its "
                    f"{chunk.stream} stream (seed {chunk.seed}); {chunk.stop} were asked for"
                )
            if index >= chunk.start:  # before: a chunk that exists already, replayed
                items.append(item)
        _write_chunk(folder, chunk, _stack(items, chunk, dataset))
        position, written = chunk.stop, written + len(items)
        if on_chunk is not None:
            on_chunk(len(items))
    return written


def _make_missing(
    dataset: str, spec: GeneratorSpec, folder: str, missing: list[_Chunk], workers: int, bar
) -> None:
    """Make the missing chunks: one task per chunk in ``workers`` processes (indexable), else
    one per stream in this process (a sequential stream cannot be split, and is fast)."""
    tasks = [[c] for c in missing]
    if not spec.indexable:
        tasks = [[c for c in missing if c.stream == s] for s in ("train", "test")]
        tasks, workers = [t for t in tasks if t], 1
    if min(workers, len(tasks)) <= 1:
        for chunks in tasks:
            _make_chunks(dataset, spec, folder, chunks, bar.update)
        return
    context = multiprocessing.get_context("spawn")  # safe whatever threads the caller runs
    executor = concurrent.futures.ProcessPoolExecutor(min(workers, len(tasks)), mp_context=context)
    try:
        futures = [executor.submit(_make_chunks, dataset, spec, folder, t) for t in tasks]
        for future in concurrent.futures.as_completed(futures):
            bar.update(future.result())
    finally:
        # On an error or Ctrl-C: drop the tasks not started; the chunks written stay.
        executor.shutdown(wait=True, cancel_futures=True)


def _open_partial(folder: str, request: dict) -> None:
    """Make ``folder`` hold the chunks of ``request``: keep it when it does, else start over."""
    request_path = os.path.join(folder, REQUEST_FILE)
    found = None
    with (
        contextlib.suppress(OSError, json.JSONDecodeError),
        open(request_path, encoding="utf-8") as f,
    ):
        found = json.load(f)
    if os.path.isdir(folder) and found != request:
        logger.warning(
            "discarding %s: it holds chunks of another generation request (%s)", folder, found
        )
        shutil.rmtree(folder)
    if not os.path.isdir(folder):
        os.makedirs(folder)
        atomic_write_text(request_path, json.dumps(request, indent=2))
    for name in os.listdir(folder):
        if TMP_MARK in name:  # a chunk a killed process was writing
            os.remove(os.path.join(folder, name))


def _load_chunk(folder: str, chunk: _Chunk) -> dict[str, np.ndarray]:
    path = os.path.join(folder, chunk.file_name)
    try:
        with np.load(path) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DatasetError(
            f"{path}: unreadable chunk ({exc}); delete it and run again to remake it"
        ) from exc
    return arrays


def generate_dataset(
    dataset: str,
    root: str,
    *,
    num_examples: int,
    seed: int,
    test_size: int = 320,
    overwrite: bool = False,
    progress: bool = True,
    workers: int | None = None,
    locked: bool = False,
) -> str:
    """Generate ``<root>/<dataset>`` under the dataset's lock (see the module docstring).

    Args:
        dataset: a key of ``lib.prepare.generators.GENERATORS``.
        root: ``DATASETS.ROOT``.
        num_examples, seed: the training part.
        test_size: test examples, from ``derived_test_seed(seed)``, stored last.
        overwrite: replace an existing folder (once the new one is complete).
        progress: show a tqdm progress bar.
        workers: processes making the chunks; None = every core this process may use.
        locked: the caller holds the dataset's lock already (``prepare_missing``).

    Returns:
        The dataset folder.

    Raises:
        KeyError: no generator for ``dataset``; FileExistsError: the folder exists without
        ``overwrite``; ValueError: bad sizes or ``workers``, or a generator breaking the protocol.
    """
    spec = get_spec(dataset)  # an unknown dataset fails before anything is written
    with contextlib.nullcontext() if locked else dataset_lock(root, dataset):
        target = dataset_dir(root, dataset)
        if os.path.exists(target) and not overwrite:
            raise DatasetExistsError(f"{target} already exists; remove it or pass --overwrite")
        if num_examples < 0 or test_size < 0 or num_examples + test_size == 0:
            raise DatasetError(
                f"{dataset}: cannot generate {num_examples} training and {test_size} test examples "
                "(need >= 0 each, > 0 in all)"
            )
        workers = available_cpus() if workers is None else workers
        if workers < 1:
            raise DatasetError(f"workers must be >= 1, got {workers}")
        test_seed = derived_test_seed(seed)
        started = time.time()
        about = {
            "generator": spec.module,
            "generator_kwargs": dict(spec.kwargs),
            "seed": seed,
            "test_seed": test_seed,
            "num_train": num_examples,
            "num_test": test_size,
        }
        request = {"format_version": FORMAT_VERSION, "dataset": dataset, **about}
        request["chunk_size"] = spec.chunk_size
        request = json.loads(json.dumps(request))  # as read back from request.json
        folder = partial_dir(root, dataset)
        _open_partial(folder, request)
        chunks = [
            _Chunk(stream, stream_seed, index, start, min(start + spec.chunk_size, total))
            for stream, stream_seed, total in (
                ("train", seed, num_examples),
                ("test", test_seed, test_size),
            )
            for index, start in enumerate(range(0, total, spec.chunk_size))
        ]
        missing = [c for c in chunks if not os.path.isfile(os.path.join(folder, c.file_name))]
        total = num_examples + test_size
        done = total - sum(c.stop - c.start for c in missing)
        if done:
            logger.info(
                "%s: resuming from %s (%d of %d examples made)", dataset, folder, done, total
            )
        bar = tqdm(total=total, initial=done, desc=f"generate {dataset}", disable=not progress)
        with contextlib.closing(bar):
            _make_missing(dataset, spec, folder, missing, workers, bar)
        with DatasetWriter(root, dataset, overwrite) as writer:
            for chunk in chunks:
                arrays = _load_chunk(folder, chunk)
                factors = {
                    k[len("factor.") :]: v for k, v in arrays.items() if k.startswith("factor.")
                }
                writer.add_many(arrays["image"], arrays["mask"], factors)
            builtin = BUILTIN_DATASETS.get(dataset)
            meta = {
                "dataset": dataset,
                "source": "generated",
                **about,
                "crop": list(builtin.crop) if builtin and builtin.crop else None,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "seconds": round(time.time() - started, 1),
            }
            path = writer.commit(meta)
        shutil.rmtree(folder)
        logger.info("wrote %s: %d train + %d test examples", path, num_examples, test_size)
        return path
