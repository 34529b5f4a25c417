"""generate_dataset: chunked, resumable, parallel generation with the bytes of one plain run.

The reference everywhere is the generator itself, run once from the start in this process
(``generate(n, seed)`` for the training part, ``generate(m, derived_test_seed(seed))`` for the
test part), written by nothing but ``np.stack``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from lib.prepare import derived_test_seed, generate_dataset, generators
from lib.prepare import generation as generation_module
from lib.prepare.generation import partial_dir
from lib.prepare.generators import clevr, tetrominoes
from tests.prepare.conftest import REPO

# A CLEVR scene at 24x32 renders in milliseconds; chunks of 2 make several chunks per stream.
# Registered under "sprites" below: that name has no crop (CLEVR's needs 240x320 frames).
SMALL_CLEVR = generators.GeneratorSpec(
    "lib.prepare.generators.clevr",
    {"min_objects": 1, "max_objects": 3, "height": 24, "width": 32},
    indexable=True,
    chunk_size=2,
)
SMALL_TETROMINOES = generators.GeneratorSpec("lib.prepare.generators.tetrominoes", chunk_size=4)


def _reference(generate, num_train: int, num_test: int, seed: int) -> dict[str, np.ndarray]:
    items = list(generate(num_train, seed)) + list(generate(num_test, derived_test_seed(seed)))
    out = {
        "images": np.stack([it["image"] for it in items]),
        "masks": np.stack([it["mask"] for it in items]),
    }
    for name in items[0]["factors"]:
        out[f"factors/{name}"] = np.stack([it["factors"][name] for it in items])
    return out


def _files(path: str) -> dict[str, bytes]:
    """Every file of a dataset folder but meta.json's timing fields, as bytes."""
    out = {}
    for folder, _, names in os.walk(path):
        for name in names:
            full = os.path.join(folder, name)
            data = open(full, "rb").read()
            if name == "meta.json":
                meta = json.loads(data)
                meta.pop("created"), meta.pop("seconds")
                data = json.dumps(meta, sort_keys=True).encode()
            out[os.path.relpath(full, path)] = data
    return out


def _assert_matches(path: str, reference: dict[str, np.ndarray]) -> None:
    for key, expected in reference.items():
        stored = np.load(os.path.join(path, f"{key}.npy"))
        if key.startswith("factors/") and expected.dtype not in (np.uint8, np.float32):
            expected = expected.astype(np.float32)
        assert stored.dtype == expected.dtype, key
        np.testing.assert_array_equal(stored, expected, err_msg=key)


def _listing(root) -> list[str]:
    return sorted(os.listdir(root))


def test_sequential_generator_in_chunks_matches_one_stream(tmp_path, monkeypatch):
    monkeypatch.setitem(generators.GENERATORS, "tetrominoes", SMALL_TETROMINOES)
    path = generate_dataset(
        "tetrominoes", str(tmp_path), num_examples=10, seed=5, test_size=3, progress=False
    )
    _assert_matches(path, _reference(tetrominoes.generate, 10, 3, 5))
    meta = json.load(open(os.path.join(path, "meta.json")))
    assert (meta["num_train"], meta["num_test"], meta["num_examples"]) == (10, 3, 13)
    assert meta["generator"] == "lib.prepare.generators.tetrominoes"
    assert _listing(tmp_path) == ["tetrominoes"]  # no lock, partial or temporary left


def _interrupt_after(monkeypatch, chunks: int) -> list[str]:
    """Make the chunk writer raise KeyboardInterrupt (Ctrl-C) once, when ``chunks`` are
    written; returns the list of chunk files written, which keeps growing after that."""
    written: list[str] = []
    interrupted = []
    real = generation_module._write_chunk

    def write(folder, chunk, arrays):
        if len(written) == chunks and not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt
        real(folder, chunk, arrays)
        written.append(chunk.file_name)

    monkeypatch.setattr(generation_module, "_write_chunk", write)
    return written


def _chunk_count(spec, num_train: int, num_test: int) -> int:
    return -(-num_train // spec.chunk_size) + -(-num_test // spec.chunk_size)


def _small_clevr(n: int, seed: int):
    return clevr.generate(n, seed, **SMALL_CLEVR.kwargs)


@pytest.mark.parametrize(
    "dataset,spec,generate",
    [
        ("tetrominoes", SMALL_TETROMINOES, tetrominoes.generate),
        ("sprites", SMALL_CLEVR, _small_clevr),
    ],
)
def test_interrupted_generation_resumes_to_the_same_bytes(
    tmp_path, monkeypatch, dataset, spec, generate
):
    monkeypatch.setitem(generators.GENERATORS, dataset, spec)
    kwargs = dict(num_examples=9, seed=2, test_size=3, progress=False, workers=1)
    uninterrupted = generate_dataset(dataset, str(tmp_path / "plain"), **kwargs)

    root = str(tmp_path / "root")
    written = _interrupt_after(monkeypatch, chunks=2)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(dataset, root, **kwargs)
    partial = partial_dir(root, dataset)
    assert sorted(os.listdir(partial)) == sorted(["request.json", *written])
    assert _listing(root) == [os.path.basename(partial)]  # no dataset folder, no lock

    # The rerun makes only the missing chunks, and the same bytes.
    first = list(written)
    path = generate_dataset(dataset, root, **kwargs)
    made = written[len(first) :]
    assert not set(made) & set(first)
    assert len(first) + len(made) == _chunk_count(spec, 9, 3)
    _assert_matches(path, _reference(generate, 9, 3, 2))
    assert _files(path) == _files(uninterrupted)
    assert _listing(root) == [dataset]


def test_partial_of_another_request_is_discarded(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(generators.GENERATORS, "tetrominoes", SMALL_TETROMINOES)
    root = str(tmp_path)
    _interrupt_after(monkeypatch, chunks=1)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset("tetrominoes", root, num_examples=9, seed=0, test_size=3, progress=False)
    # Another seed: the chunk of seed 0 must not be mixed in.
    path = generate_dataset(
        "tetrominoes", root, num_examples=9, seed=1, test_size=3, progress=False
    )
    assert "discarding" in caplog.text and partial_dir(root, "tetrominoes") in caplog.text
    _assert_matches(path, _reference(tetrominoes.generate, 9, 3, 1))
    assert _listing(root) == ["tetrominoes"]


def test_stale_temporaries_of_killed_runs_are_removed(tmp_path, monkeypatch):
    monkeypatch.setitem(generators.GENERATORS, "tetrominoes", SMALL_TETROMINOES)
    root = tmp_path
    # What a SIGKILL can leave: the writer's temporary folder, an old folder being replaced,
    # and a half-written chunk in the partial folder.
    os.makedirs(root / ".tetrominoes.tmp-k1ll3d" / "factors")
    (root / ".tetrominoes.tmp-k1ll3d" / "images.npy").write_bytes(b"half")
    os.makedirs(root / ".tetrominoes.old-abc")
    os.makedirs(root / ".sprites.tmp-other")  # another dataset's: not ours to remove
    _interrupt_after(monkeypatch, chunks=1)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset("tetrominoes", str(root), num_examples=5, seed=0, test_size=1)
    partial = partial_dir(str(root), "tetrominoes")
    (root / ".tetrominoes.partial" / "train-000001.npz.tmp.12345").write_bytes(b"half")
    generate_dataset("tetrominoes", str(root), num_examples=5, seed=0, test_size=1)
    assert _listing(root) == [".sprites.tmp-other", "tetrominoes"]
    assert not os.path.exists(partial)
    _assert_matches(str(root / "tetrominoes"), _reference(tetrominoes.generate, 5, 1, 0))


def test_existing_folder_needs_overwrite_and_errors_are_clear(tmp_path):
    root = str(tmp_path)
    generate_dataset("sprites", root, num_examples=3, seed=0, test_size=1, progress=False)
    with pytest.raises(FileExistsError, match="--overwrite"):
        generate_dataset("sprites", root, num_examples=3, seed=1, test_size=1)
    path = generate_dataset(
        "sprites", root, num_examples=4, seed=1, test_size=1, overwrite=True, progress=False
    )
    assert json.load(open(os.path.join(path, "meta.json")))["num_examples"] == 5
    assert _listing(root) == ["sprites"]
    with pytest.raises(KeyError, match="no generator for dataset 'nope'"):
        generate_dataset("nope", root, num_examples=1, seed=0)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        generate_dataset("sprites", str(tmp_path / "w"), num_examples=1, seed=0, workers=0)
    assert _listing(root) == ["sprites", "w"] and os.listdir(tmp_path / "w") == []


def test_short_generator_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setitem(
        generators.GENERATORS,
        "sprites",
        generators.GeneratorSpec("tests.prepare.short_generator", {"length": 5}, chunk_size=3),
    )
    with pytest.raises(ValueError, match=r"ended after 5 examples of its train stream"):
        generate_dataset("sprites", str(tmp_path), num_examples=7, seed=0, test_size=1)
    assert not os.path.exists(tmp_path / "sprites")


@pytest.mark.slow
def test_two_workers_make_the_bytes_of_one(tmp_path, monkeypatch):
    monkeypatch.setitem(generators.GENERATORS, "sprites", SMALL_CLEVR)
    kwargs = dict(num_examples=7, seed=4, test_size=3, progress=False)
    one = generate_dataset("sprites", str(tmp_path / "one"), workers=1, **kwargs)
    two = generate_dataset("sprites", str(tmp_path / "two"), workers=2, **kwargs)
    assert _files(one) == _files(two)
    _assert_matches(two, _reference(_small_clevr, 7, 3, 4))
    assert _listing(tmp_path / "two") == ["sprites"]


KILLED_RUN = textwrap.dedent(
    """
    import sys, time
    from lib.prepare import generation, generators
    from tests.prepare.test_generation import SMALL_CLEVR

    generators.GENERATORS["sprites"] = SMALL_CLEVR
    real = generation._write_chunk

    def slow_write(folder, chunk, arrays):  # leave time to kill the run mid-way
        real(folder, chunk, arrays)
        time.sleep(0.5)

    generation._write_chunk = slow_write
    generation.generate_dataset(
        "sprites", sys.argv[1], num_examples=20, seed=6, test_size=4, progress=False, workers=1
    )
    """
)


@pytest.mark.slow
def test_sigkilled_run_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    root = tmp_path / "root"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, str(root)], cwd=REPO, start_new_session=True
    )
    partial = root / ".sprites.partial"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if partial.is_dir() and len([n for n in os.listdir(partial) if n.endswith(".npz")]) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    chunks = sorted(n for n in os.listdir(partial) if n.endswith(".npz"))
    assert 3 <= len(chunks) < _chunk_count(SMALL_CLEVR, 20, 4)

    monkeypatch.setitem(generators.GENERATORS, "sprites", SMALL_CLEVR)
    kwargs = dict(num_examples=20, seed=6, test_size=4, progress=False)
    path = generate_dataset("sprites", str(root), workers=2, **kwargs)
    plain = generate_dataset("sprites", str(tmp_path / "plain"), workers=1, **kwargs)
    assert _files(path) == _files(plain)
    _assert_matches(path, _reference(_small_clevr, 20, 4, 6))
    assert _listing(root) == ["sprites"]
