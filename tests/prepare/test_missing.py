"""prepare_missing: what the tools call before building datasets."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from lib.data import make_dataset
from lib.prepare import MissingDataError, derived_test_seed, generate_dataset, prepare_missing
from lib.prepare import generators as gen_registry
from lib.prepare import missing as missing_module
from lib.prepare.generators import tetrominoes as tet
from lib.prepare.writer import dataset_lock
from tests.data.conftest import data_cfg
from tests.prepare.conftest import REPO


def _tet_cfg(root, **kw):
    base = dict(
        INPUT__IMAGE_SIZE=35,
        DATASETS__GENERATE_SIZE=12,
        DATASETS__TEST_SIZE=4,
        DATASETS__GENERATE_SEED=3,
    )
    base.update(kw)
    return data_cfg(root, **base)


def test_missing_generated_dataset_is_generated_loudly(tmp_path, caplog):
    cfg = _tet_cfg(tmp_path)
    with caplog.at_level(logging.WARNING):
        folders = prepare_missing(cfg, ["tetrominoes_synth_train", "tetrominoes_synth_test"])
    assert folders == [os.path.join(str(tmp_path), "tetrominoes_synth")]
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert os.path.join(str(tmp_path), "tetrominoes_synth") in warning
    assert "tools/prepare_data.py --dataset tetrominoes" in warning
    assert "--num-examples 12 --seed 3 --test-size 4" in warning
    train = make_dataset("tetrominoes_synth_train", cfg, True)
    test = make_dataset("tetrominoes_synth_test", cfg, False)
    assert (len(train), len(test)) == (12, 4)
    prov = test.provenance
    assert prov["source"] == "generated" and prov["seed"] == 3
    assert prov["generator"] == "lib.prepare.generators.tetrominoes"
    assert prov["test_seed"] == derived_test_seed(3) != 3
    assert prov["split"] == "test" and prov["split_range"] == [12, 16]
    # Training part from the seed, test part from its own stream, stored last.
    expected_train = [it["image"] for it in tet.generate(12, 3)]
    expected_test = [it["image"] for it in tet.generate(4, derived_test_seed(3))]
    for i in range(12):
        np.testing.assert_array_equal(train.load_arrays(i)[0], expected_train[i])
    for i in range(4):
        np.testing.assert_array_equal(test.load_arrays(i)[0], expected_test[i])
    train_bytes = {a.tobytes() for a in expected_train}
    assert not any(a.tobytes() in train_bytes for a in expected_test)


def test_existing_folder_is_used_whatever_its_size(tmp_path, caplog):
    generate_dataset(
        "tetrominoes_synth", str(tmp_path), num_examples=5, seed=0, test_size=2, progress=False
    )
    cfg = _tet_cfg(tmp_path, DATASETS__GENERATE_SIZE=50)
    with caplog.at_level(logging.WARNING):
        assert prepare_missing(cfg, ["tetrominoes_synth"]) == [
            os.path.join(str(tmp_path), "tetrominoes_synth")
        ]
        assert len(make_dataset("tetrominoes_synth", cfg, False)) == 7
    assert not caplog.records


def test_other_names_are_skipped_and_folders_listed_once(tmp_path):
    cfg = _tet_cfg(tmp_path, DATASETS__GENERATE_SIZE=2, DATASETS__TEST_SIZE=1)
    names = [
        "folder:/no/such/path",
        "my_registered_set",
        "sprites_test",
        "sprites",
        "tetrominoes_synth",
    ]
    folders = prepare_missing(cfg, names)
    assert folders == [os.path.join(str(tmp_path), n) for n in ("sprites", "tetrominoes_synth")]
    assert sorted(os.listdir(tmp_path)) == ["sprites", "tetrominoes_synth"]
    assert prepare_missing(cfg, []) == []


def test_missing_official_data_stops_before_any_generation(tmp_path):
    # The stand-in is listed first: nothing may be generated when the official set is missing.
    names = ["tetrominoes_synth_train", "clevr6_train", "clevr6_test"]
    with pytest.raises(MissingDataError) as info:
        prepare_missing(data_cfg(tmp_path), names)
    message = str(info.value)
    assert f"{tmp_path / 'clevr6'} does not exist" in message
    assert "gsutil cp gs://multi-object-datasets/clevr_with_masks/clevr_with_masks_train" in message
    assert (
        f"python tools/prepare_data.py --dataset clevr6 --tfrecords "
        f"clevr_with_masks_train.tfrecords --root {tmp_path}" in message
    )
    assert "DATASETS.TRAIN clevr6_synth_train DATASETS.TEST clevr6_synth_test" in message
    assert os.listdir(tmp_path) == []


def test_a_generated_folder_under_a_paper_name_is_refused(tmp_path):
    # What an earlier version wrote: a stand-in in <root>/tetrominoes.
    path = generate_dataset(
        "tetrominoes_synth", str(tmp_path), num_examples=3, seed=0, test_size=1, progress=False
    )
    os.rename(path, tmp_path / "tetrominoes")
    with pytest.raises(MissingDataError, match="holds 'generated' data.*rename it to"):
        prepare_missing(data_cfg(tmp_path), ["tetrominoes_train"])


def test_missing_without_generator_is_error(tmp_path, monkeypatch):
    monkeypatch.delitem(gen_registry.GENERATORS, "clevr6_synth")
    with pytest.raises(FileNotFoundError, match=r"clevr6_synth.*no generator.*--tfrecords"):
        prepare_missing(data_cfg(tmp_path), ["clevr6_synth_train"])
    assert not os.path.exists(tmp_path / "clevr6_synth")


def test_folder_without_meta_is_error(tmp_path):
    os.makedirs(tmp_path / "tetrominoes_synth")
    with pytest.raises(FileNotFoundError, match="no meta.json"):
        prepare_missing(data_cfg(tmp_path), ["tetrominoes_synth_train"])


def test_a_waiting_process_finds_the_folder_complete(tmp_path, monkeypatch):
    # Rank 0 holds the lock and generates; rank 1 (a thread here: flock excludes separate
    # open files even within a process) blocks on the lock, then uses rank 0's folder.
    cfg = _tet_cfg(tmp_path, DATASETS__GENERATE_SIZE=3, DATASETS__TEST_SIZE=1)
    calls = []
    real = missing_module.generate_dataset
    monkeypatch.setattr(
        missing_module, "generate_dataset", lambda *a, **k: calls.append(a) or real(*a, **k)
    )
    result = []
    with dataset_lock(str(tmp_path), "tetrominoes_synth"):
        waiter = threading.Thread(
            target=lambda: result.append(prepare_missing(cfg, ["tetrominoes_synth"]))
        )
        waiter.start()
        waiter.join(timeout=0.2)
        assert waiter.is_alive()  # blocked on the lock
        real(
            "tetrominoes_synth",
            str(tmp_path),
            num_examples=3,
            seed=9,
            test_size=1,
            progress=False,
            workers=1,
            locked=True,
        )
    waiter.join(timeout=30)
    assert not waiter.is_alive()
    assert result == [[os.path.join(str(tmp_path), "tetrominoes_synth")]] and calls == []
    assert make_dataset("tetrominoes_synth", cfg, False).provenance["seed"] == 9  # rank 0's folder
    assert sorted(os.listdir(tmp_path)) == ["tetrominoes_synth"]  # the lock file is gone too


RANK = textwrap.dedent(
    """
    import logging, sys, time
    from lib.config import get_cfg
    from lib.prepare import generation, prepare_missing

    logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
    real = generation._write_chunk

    def slow_write(folder, chunk, arrays):  # hold the lock long enough for the other rank
        time.sleep(1.0)
        real(folder, chunk, arrays)

    generation._write_chunk = slow_write
    cfg = get_cfg()
    cfg.DATASETS.ROOT, cfg.DATASETS.GENERATE_SIZE, cfg.DATASETS.TEST_SIZE = sys.argv[1], 6, 2
    print(prepare_missing(cfg, ["tetrominoes_synth_train", "tetrominoes_synth_test"]))
    """
)


@pytest.mark.slow
def test_two_processes_generate_once(tmp_path):
    root = str(tmp_path / "data")
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", RANK, root],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [rank.communicate(timeout=120) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], outputs
    folder = os.path.join(root, "tetrominoes_synth")
    assert all(out.strip() == repr([folder]) for out, _ in outputs)
    errs = [err for _, err in outputs]
    assert sum("GENERATING tetrominoes" in err for err in errs) == 1
    assert sum("waiting for it" in err for err in errs) == 1
    assert sorted(os.listdir(root)) == ["tetrominoes_synth"]
    expected = [it["image"] for it in tet.generate(6, 0)]
    np.testing.assert_array_equal(np.load(os.path.join(folder, "images.npy"))[:6], expected)
