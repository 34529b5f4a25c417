"""tools/prepare_data.py: config file and overrides, flags that win, one-line errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from lib.prepare.generators import sprites, tetrominoes
from tests.prepare.conftest import clevr_record, load_tool, write_tfrecords


@pytest.fixture(scope="module")
def tool():
    return load_tool("prepare_data")


def _yaml(tmp_path, root, **keys) -> str:
    lines = ["DATASETS:", f"  ROOT: {root}"] + [f"  {k}: {v}" for k, v in keys.items()]
    path = tmp_path / "prep.yaml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _meta(root, dataset) -> dict:
    return json.load(open(os.path.join(root, dataset, "meta.json")))


def test_config_keys_are_the_defaults(tmp_path, tool):
    root = str(tmp_path / "data")
    cfg = _yaml(tmp_path, root, GENERATE_SIZE=4, GENERATE_SEED=2, TEST_SIZE=3)
    assert tool.main(["--dataset", "tetrominoes_synth", "--config-file", cfg, "--no-progress"]) == 0
    meta = _meta(root, "tetrominoes_synth")
    assert (meta["num_train"], meta["num_test"], meta["seed"]) == (4, 3, 2)
    stored = np.load(os.path.join(root, "tetrominoes_synth", "images.npy"))
    expected = [it["image"] for it in tetrominoes.generate(4, 2)]
    np.testing.assert_array_equal(stored[:4], np.stack(expected))


def test_flags_and_trailing_overrides_win(tmp_path, tool):
    root = str(tmp_path / "data")
    cfg = _yaml(tmp_path, root, GENERATE_SIZE=4, GENERATE_SEED=2, TEST_SIZE=3)
    argv = ["--dataset", "sprites", "--config-file", cfg, "--test-size", "1"]
    argv += ["DATASETS.GENERATE_SEED", "5", "--no-progress", "--workers", "1"]
    assert tool.main(argv) == 0
    meta = _meta(root, "sprites")
    assert (meta["num_train"], meta["num_test"], meta["seed"]) == (4, 1, 5)
    stored = np.load(os.path.join(root, "sprites", "masks.npy"))
    np.testing.assert_array_equal(
        stored[:4], np.stack([it["mask"] for it in sprites.generate(4, 5)])
    )


def test_clevr_train_records_from_the_config(tmp_path, tool):
    rng = np.random.default_rng(1)
    counts = (3, 6, 7, 5, 2, 9, 4)  # objects per raw record
    src = write_tfrecords(str(tmp_path / "c.tfrecords"), [clevr_record(rng, n)[0] for n in counts])
    root = str(tmp_path / "data")
    cfg = _yaml(tmp_path, root, CLEVR_TRAIN_RECORDS=4, TEST_SIZE=2)
    argv = ["--dataset", "clevr6", "--tfrecords", src, "--config-file", cfg, "--no-progress"]
    assert tool.main(argv) == 0
    meta = _meta(root, "clevr6")
    # First 4 raw records, filtered to <= 6 objects: 3, 6, 5; the test part: the next 2 kept.
    assert (meta["train_records"], meta["num_train"], meta["num_test"]) == (4, 3, 2)
    assert meta["records_read"] == 7


@pytest.mark.parametrize(
    "extra,message",
    [
        (["DATASETS.GENERATE_SIZZE", "3"], "GENERATE_SIZZE"),
        (["--num-examples", "-1"], "--num-examples must be >= 0"),
        (["--workers", "0"], "--workers must be >= 1"),
    ],
)
def test_errors_are_one_line(tmp_path, tool, capsys, extra, message):
    argv = ["--dataset", "sprites", "--root", str(tmp_path), "--no-progress", *extra]
    assert tool.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert os.listdir(tmp_path) == []


def test_existing_folder_is_an_error_without_overwrite(tmp_path, tool, capsys):
    argv = ["--dataset", "sprites", "--root", str(tmp_path), "--no-progress"]
    argv += ["--num-examples", "2", "--test-size", "1"]
    assert tool.main(argv) == 0
    assert tool.main(argv) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert tool.main([*argv, "--overwrite", "--seed", "3"]) == 0
    assert _meta(str(tmp_path), "sprites")["seed"] == 3
