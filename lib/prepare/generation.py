"""Generate a built-in dataset with its procedural generator, on every core, resumably.

A generated set has two streams: the training part, ``num_train`` examples from ``seed``, and
the test part, ``num_test`` examples from ``derived_test_seed(seed)`` (an independent stream,
so the parts are disjoint), stored last.

The work is cut into chunks of ``GeneratorSpec.chunk_size`` consecutive examples of one stream.
Each chunk is written atomically to ``<root>/.<dataset>.partial/`` beside ``request.json``,
which names what is being generated (dataset, generator and its kwargs, seed, sizes, chunk
size). When every chunk exists they are copied in order into the dataset folder through
``DatasetWriter`` (a temporary folder renamed into place) and the partial folder is removed.
An interrupted run (an error, Ctrl-C, SIGKILL) leaves its complete chunks behind and the next
run of the same request resumes from them; a partial folder of another request is discarded.

Processes: an indexable generator (CLEVR: example i depends only on ``(seed, i)``, about 30
to 80 scenes per second per core) gives one task per chunk, spread over ``workers`` processes
(started with "spawn", each importing the package afresh: a second or two). A sequential
generator (one random stream through the whole set: Tetrominoes, Multi-dSprites, sprites;
thousands of examples per second) runs in this process, one task per stream that first replays
the stream up to its first missing chunk. Either way a chunk holds the bytes one uninterrupted
single-process run makes, so the result depends neither on ``workers`` nor on interruptions.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import json
import logging
import multiprocessing
import os
import shutil
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from lib.data.format import BUILTIN_DATASETS, FORMAT_VERSION, dataset_dir, prepare_command
from lib.errors import DatasetError, DatasetExistsError, MissingDatasetError
from lib.prepare.generators import GeneratorSpec, generate_range, get_spec
from lib.prepare.lock import dataset_lock
from lib.prepare.writer import DatasetWriter
from lib.utils.io import TMP_MARK, atomic_write_bytes, atomic_write_text

logger = logging.getLogger(__name__)

REQUEST_FILE = "request.json"


def derived_test_seed(seed: int) -> int:
    """Seed of the test part of a generated set.

    Args:
        seed: seed of the training part.

    Returns:
        A 32-bit seed from ``SeedSequence([seed, 0x7E57])``: an independent stream, so the test
        part does not repeat the training part.
    """
    return int(np.random.SeedSequence([seed, 0x7E57]).generate_state(1, dtype=np.uint32)[0])


def generate_command(dataset: str, root: str, num_examples: int, seed: int, test_size: int) -> str:
    """The ``tools/prepare_data.py`` command line that generates a dataset by hand.

    Args:
        dataset: built-in dataset name.
        root: ``DATASETS.ROOT``.
        num_examples: training examples.
        seed: generator seed.
        test_size: test examples.

    Returns:
        The shell command.
    """
    return (
        f"{prepare_command(dataset, root)} --num-examples {num_examples} --seed {seed} "
        f"--test-size {test_size}"
    )


def available_cpus() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # pragma: no cover - macOS, Windows


def partial_dir(root: str, dataset: str) -> str:
    """Folder of the chunks of an unfinished generation: ``<root>/.<dataset>.partial``."""
    return os.path.join(root, f".{dataset}.partial")


@dataclass(frozen=True)
class _Chunk:
    """Examples ``start .. stop - 1`` of one stream, chunk ``index`` of it."""

    stream: str  # "train" or "test"
    seed: int
    index: int
    start: int
    stop: int

    @property
    def file_name(self) -> str:
        return f"{self.stream}-{self.index:06d}.npz"


@dataclass(frozen=True)
class _Task:
    """Chunks of one stream, in order, that one process makes (and writes to ``folder``)."""

    dataset: str
    spec: GeneratorSpec
    folder: str
    chunks: tuple[_Chunk, ...]


def _plan(num_train: int, num_test: int, seed: int, test_seed: int, size: int) -> list[_Chunk]:
    """Every chunk of the set, in storage order (training stream, then test stream)."""
    chunks = []
    for stream, stream_seed, total in (("train", seed, num_train), ("test", test_seed, num_test)):
        for index, start in enumerate(range(0, total, size)):
            chunks.append(_Chunk(stream, stream_seed, index, start, min(start + size, total)))
    return chunks


def _stack(items: list[dict], chunk: _Chunk, dataset: str) -> dict[str, np.ndarray]:
    """Arrays of a chunk file: ``image`` (n, H, W, 3), ``mask`` (n, H, W), ``factor.<name>``."""
    names = list(items[0].get("factors", {}))
    out: dict[str, list] = {"image": [], "mask": [], **{f"factor.{n}": [] for n in names}}
    for offset, item in enumerate(items):
        factors = item.get("factors", {})
        if list(factors) != names:
            raise DatasetError(
                f"generator of {dataset}: {chunk.stream} example {chunk.start + offset} has "
                f"factors {sorted(factors)}, example {chunk.start} has {sorted(names)}"
            )
        out["image"].append(np.asarray(item["image"]))
        out["mask"].append(np.asarray(item["mask"]))
        for n in names:
            out[f"factor.{n}"].append(np.asarray(factors[n]))
    stacked = {}
    for key, rows in out.items():
        shapes = {row.shape for row in rows}
        if len(shapes) != 1:
            raise DatasetError(
                f"generator of {dataset}: {key} of the {chunk.stream} examples "
                f"{chunk.start}..{chunk.stop - 1} has several shapes {sorted(shapes)}"
            )
        stacked[key] = np.stack(rows)
    return stacked


def _write_chunk(folder: str, chunk: _Chunk, arrays: dict[str, np.ndarray]) -> None:
    if not os.path.isdir(folder):
        # A worker that outlived its killed parent while a later run finished and removed
        # the partial folder: writing would bring the folder back, with no one to remove it.
        raise MissingDatasetError(f"{folder} is gone: its generation has ended")
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(os.path.join(folder, chunk.file_name), lambda f: f.write(buffer.getvalue()))


def _run_task(task: _Task, on_chunk: Callable[[int], None] | None = None) -> int:
    """Make and write the chunks of a task; returns the number of examples written.

    Runs in a worker process (or in the caller's when there is one worker): everything it
    needs comes in ``task``, so it also works with the "spawn" start method.
    """
    first, last = task.chunks[0], task.chunks[-1]
    stream = generate_range(task.spec, task.dataset, first.seed, first.start, last.stop)
    position, written = first.start, 0
    for chunk in task.chunks:
        items = []
        for index in range(position, chunk.stop):
            item = next(stream, None)
            if item is None:
                raise DatasetError(
                    f"generator of {task.dataset} ended after {index} examples of its "
                    f"{chunk.stream} stream (seed {chunk.seed}); {chunk.stop} were asked for"
                )
            if index >= chunk.start:  # before: a chunk that exists already, replayed
                items.append(item)
        _write_chunk(task.folder, chunk, _stack(items, chunk, task.dataset))
        position = chunk.stop
        written += len(items)
        if on_chunk is not None:
            on_chunk(len(items))
    return written


def _tasks(dataset: str, spec: GeneratorSpec, folder: str, missing: list[_Chunk]) -> list[_Task]:
    """One task per chunk (indexable generator) or per stream (sequential generator)."""
    if spec.indexable:
        return [_Task(dataset, spec, folder, (chunk,)) for chunk in missing]
    streams: dict[str, list[_Chunk]] = {}
    for chunk in missing:
        streams.setdefault(chunk.stream, []).append(chunk)
    return [_Task(dataset, spec, folder, tuple(chunks)) for chunks in streams.values()]


def _run_tasks(tasks: list[_Task], workers: int, bar: tqdm) -> None:
    """Run the tasks in ``workers`` processes ("spawn": safe whatever threads the caller
    runs), or in this process when one is enough."""
    workers = min(workers, len(tasks))
    if workers <= 1:
        for task in tasks:
            _run_task(task, bar.update)
        return
    context = multiprocessing.get_context("spawn")
    executor = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context)
    try:
        futures = [executor.submit(_run_task, task) for task in tasks]
        for future in concurrent.futures.as_completed(futures):
            bar.update(future.result())
    finally:
        # On an error or Ctrl-C: drop the tasks not started; the chunks written stay.
        executor.shutdown(wait=True, cancel_futures=True)


def _open_partial(folder: str, request: dict) -> None:
    """Make ``folder`` hold the chunks of ``request``: keep it when it does, else start over."""
    request_path = os.path.join(folder, REQUEST_FILE)
    if os.path.isdir(folder):
        try:
            with open(request_path, encoding="utf-8") as f:
                found = json.load(f)
        except (OSError, json.JSONDecodeError):
            found = None
        if found != request:
            logger.warning(
                "discarding %s: it holds chunks of another generation request (%s)",
                folder,
                found,
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
    count = chunk.stop - chunk.start
    if "image" not in arrays or any(len(a) != count for a in arrays.values()):
        raise DatasetError(
            f"{path}: expected {count} examples in every array, found "
            f"{ {k: a.shape for k, a in arrays.items()} }; delete it and run again to remake it"
        )
    return arrays


def generate_under_lock(
    dataset: str,
    root: str,
    *,
    num_examples: int,
    seed: int,
    test_size: int,
    overwrite: bool,
    progress: bool,
    workers: int | None,
) -> str:
    """``generate_dataset`` for a caller that holds the dataset's lock already
    (``prepare_missing``); same arguments, returns the folder."""
    spec = get_spec(dataset)
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
    request = {
        "format_version": FORMAT_VERSION,
        "dataset": dataset,
        "generator": spec.module,
        "generator_kwargs": dict(spec.kwargs),
        "seed": seed,
        "test_seed": test_seed,
        "num_train": num_examples,
        "num_test": test_size,
        "chunk_size": spec.chunk_size,
    }
    request = json.loads(json.dumps(request))  # as read back from request.json
    folder = partial_dir(root, dataset)
    _open_partial(folder, request)
    chunks = _plan(num_examples, test_size, seed, test_seed, spec.chunk_size)
    missing = [c for c in chunks if not os.path.isfile(os.path.join(folder, c.file_name))]
    total = num_examples + test_size
    done = total - sum(c.stop - c.start for c in missing)
    if done:
        logger.info("%s: resuming from %s (%d of %d examples made)", dataset, folder, done, total)
    bar = tqdm(total=total, initial=done, desc=f"generate {dataset}", disable=not progress)
    with contextlib.closing(bar):
        # A sequential stream cannot be split, and is fast: not worth starting processes.
        _run_tasks(_tasks(dataset, spec, folder, missing), workers if spec.indexable else 1, bar)
    with DatasetWriter(root, dataset, overwrite) as writer:
        for chunk in chunks:
            arrays = _load_chunk(folder, chunk)
            factors = {k[len("factor.") :]: v for k, v in arrays.items() if k.startswith("factor.")}
            writer.add_many(arrays["image"], arrays["mask"], factors)
        builtin = BUILTIN_DATASETS.get(dataset)
        meta = {
            "dataset": dataset,
            "source": "generated",
            "generator": spec.module,
            "generator_kwargs": dict(spec.kwargs),
            "seed": seed,
            "test_seed": test_seed,
            "num_train": num_examples,
            "num_test": test_size,
            "crop": list(builtin.crop) if builtin and builtin.crop else None,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(time.time() - started, 1),
        }
        path = writer.commit(meta)
    shutil.rmtree(folder)
    logger.info("wrote %s: %d train + %d test examples", path, num_examples, test_size)
    return path


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
) -> str:
    """Generate ``<root>/<dataset>`` with its registered generator (see the module docstring).

    Holds the dataset's lock (``lib.prepare.lock``) while it works, so concurrent
    preparations of one dataset run one after the other.

    Args:
        dataset: a key of ``lib.prepare.generators.GENERATORS``.
        root: ``DATASETS.ROOT``.
        num_examples: training examples, from ``seed``.
        seed: seed of the training stream.
        test_size: test examples, from ``derived_test_seed(seed)``, stored last and recorded
            as ``num_test`` in ``meta.json``.
        overwrite: replace an existing folder (once the new one is complete).
        progress: show a tqdm progress bar.
        workers: processes that make the chunks; None = every core this process may use.

    Returns:
        The dataset folder.

    Raises:
        KeyError: no generator for ``dataset``.
        FileExistsError: the folder exists and ``overwrite`` is False.
        ValueError: negative sizes or nothing to generate, ``workers`` < 1, or a generator
            that breaks the protocol (too few examples, inconsistent shapes).
    """
    get_spec(dataset)  # an unknown dataset fails before anything is written
    with dataset_lock(root, dataset):
        return generate_under_lock(
            dataset,
            root,
            num_examples=num_examples,
            seed=seed,
            test_size=test_size,
            overwrite=overwrite,
            progress=progress,
            workers=workers,
        )


__all__ = [
    "available_cpus",
    "derived_test_seed",
    "generate_command",
    "generate_dataset",
    "partial_dir",
]
