"""Conversion of official files: exact pixels, filters, splits, errors, atomic output."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from lib.data import make_dataset
from lib.prepare import convert_official, tfrecords
from lib.prepare.generators import tetrominoes as tet
from tests.data.conftest import data_cfg
from tests.prepare.conftest import (
    REPO,
    clevr_record,
    load_tool,
    multi_dsprites_record,
    official_example,
    write_tfrecords,
)


def _leftovers(root):
    return sorted(os.listdir(root)) if os.path.isdir(root) else []


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def test_cli_converts_tetrominoes_exactly(tmp_path, tetrominoes_mini):
    root = tmp_path / "data"
    argv = ["--dataset", "tetrominoes", "--tfrecords", tetrominoes_mini, "--root", str(root)]
    assert load_tool("prepare_data").main([*argv, "--no-progress"]) == 0
    meta = json.load(open(root / "tetrominoes" / "meta.json"))
    assert meta["source"] == "official" and meta["source_file"] == os.path.abspath(tetrominoes_mini)
    assert meta["num_examples"] == 10 and meta["format_version"] == 1

    ds = make_dataset("tetrominoes", data_cfg(root, INPUT__IMAGE_SIZE=35), False)
    assert ds.provenance["source"] == "official" and len(ds) == 10
    # Independent truth: the file's bytes as the renderer rebuilds them from the factors
    # (test_data_tfrecords checks the renderer against protobuf-decoded bytes).
    for i, rec in enumerate(tfrecords.read_official(tetrominoes_mini, "tetrominoes")):
        image, mask = ds[i]
        assert image.dtype == torch.float32 and mask.dtype == torch.int64
        assert image.shape == (3, 35, 35) and mask.shape == (35, 35)
        np.testing.assert_array_equal(_to_uint8(image), rec["image"])
        assert torch.equal(image, torch.from_numpy(rec["image"]).permute(2, 0, 1).float() / 255)
        expected = tet.render(rec["x"], rec["y"], rec["shape"], rec["color"])[1]
        np.testing.assert_array_equal(mask.numpy(), expected)
        np.testing.assert_array_equal(ds.factors(i)["color"], rec["color"])


def test_max_examples_and_split(tmp_path, tetrominoes_mini):
    convert_official("tetrominoes", tetrominoes_mini, str(tmp_path), max_examples=7, test_size=3)
    cfg = data_cfg(tmp_path, INPUT__IMAGE_SIZE=35, DATASETS__TEST_SIZE=3)
    full = make_dataset("tetrominoes", cfg, False)
    train, test = (
        make_dataset("tetrominoes_train", cfg, True),
        make_dataset("tetrominoes_test", cfg, False),
    )
    assert (len(full), len(train), len(test)) == (7, 4, 3)
    assert torch.equal(test[0][0], full[4][0]) and torch.equal(train[3][1], full[3][1])
    assert full.provenance["num_train"] == 4 and full.provenance["num_test"] == 3


def test_multi_dsprites_conversion_transposes_masks(tmp_path):
    rng = np.random.default_rng(0)
    records = [multi_dsprites_record(rng, n) for n in (2, 5, 3, 4, 2, 5, 3)]
    src = write_tfrecords(str(tmp_path / "md.tfrecords"), [r[0] for r in records])
    root = str(tmp_path / "root")
    convert_official("multi_dsprites", src, root, test_size=2, progress=False)
    cfg = data_cfg(root, INPUT__IMAGE_SIZE=64, DATASETS__TEST_SIZE=2)
    ds = make_dataset("multi_dsprites", cfg, False)
    for i, (_, truth) in enumerate(records):
        image, mask = ds[i]
        np.testing.assert_array_equal(_to_uint8(image), truth["image"])
        np.testing.assert_array_equal(mask.numpy(), truth["label"])
        np.testing.assert_array_equal(
            ds.factors(i)["color"], truth["factors"]["color"][1].astype(np.float32)
        )
    assert len(make_dataset("multi_dsprites_test", cfg, False)) == 2
    assert len(make_dataset("multi_dsprites_train", cfg, True)) == 5


CLEVR_TRAIN_COUNTS = (3, 6, 7, 5, 9, 4)  # objects per raw training record
CLEVR_TEST_COUNTS = (8, 2, 6, 10, 3)  # records after them


@pytest.fixture(scope="module")
def clevr_file(tmp_path_factory):
    rng = np.random.default_rng(1)
    records = [clevr_record(rng, n) for n in CLEVR_TRAIN_COUNTS + CLEVR_TEST_COUNTS]
    path = str(tmp_path_factory.mktemp("clevr") / "clevr.tfrecords")
    return write_tfrecords(path, [r[0] for r in records]), [r[1] for r in records]


def test_clevr6_filter_and_split(tmp_path, clevr_file):
    src, truth = clevr_file
    root = str(tmp_path)
    convert_official("clevr6", src, root, test_size=2, train_records=6, progress=False)
    # sum(visibility) <= 7 (background + at most 6 objects). The released bug would keep only
    # the 5-object scene.
    keep_train = [i for i, n in enumerate(CLEVR_TRAIN_COUNTS) if n <= 6]
    keep_test = [6 + i for i, n in enumerate(CLEVR_TEST_COUNTS) if n <= 6][:2]
    assert keep_train == [0, 1, 3, 5] and keep_test == [7, 8]
    meta = json.load(open(os.path.join(root, "clevr6", "meta.json")))
    assert (meta["num_train"], meta["num_test"], meta["records_read"]) == (4, 2, 9)
    assert meta["crop"] == [29, 221, 64, 256] and meta["filter"] == "sum(visibility) <= 7"

    cfg = data_cfg(root, INPUT__IMAGE_SIZE=192, DATASETS__TEST_SIZE=2)
    full = make_dataset("clevr6", cfg, False)
    assert len(full) == 6
    for i, src_index in enumerate(keep_train + keep_test):
        image, mask = full[i]
        # No resize at 192: exactly the official crop of the stored frame.
        np.testing.assert_array_equal(_to_uint8(image), truth[src_index]["image"][29:221, 64:256])
        np.testing.assert_array_equal(mask.numpy(), truth[src_index]["label"][29:221, 64:256])
        assert full.factors(i)["visibility"].sum() <= 7
        assert full.factors(i)["shape"].dtype == np.uint8
    test = make_dataset("clevr6_test", cfg, False)
    assert len(test) == 2 and torch.equal(test[0][0], full[4][0])
    small = make_dataset(
        "clevr6_test", data_cfg(root, INPUT__IMAGE_SIZE=32, DATASETS__TEST_SIZE=2), False
    )
    image, mask = small[1]
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32)
    assert set(mask.unique().tolist()) <= set(np.unique(truth[8]["label"]).tolist())


def test_clevr10_no_filter_and_max_examples(tmp_path, clevr_file):
    src, _ = clevr_file
    convert_official("clevr10", src, str(tmp_path), test_size=2, train_records=6, progress=False)
    meta = json.load(open(tmp_path / "clevr10" / "meta.json"))
    assert (meta["num_train"], meta["num_test"], meta["filter"]) == (6, 2, None)
    convert_official(
        "clevr6", src, str(tmp_path), test_size=2, train_records=6, max_examples=2, progress=False
    )
    meta = json.load(open(tmp_path / "clevr6" / "meta.json"))
    # At most 2 training scenes; the test scenes are those of the full conversion.
    assert (meta["num_train"], meta["num_test"]) == (2, 2)


def test_clevr_without_test_records_fails(tmp_path, clevr_file):
    src, _ = clevr_file
    with pytest.raises(ValueError, match="no scene for the test split"):
        convert_official("clevr10", src, str(tmp_path), train_records=100, progress=False)
    assert _leftovers(tmp_path) == []


def test_wrong_dataset_file_fails_without_output(tmp_path, tetrominoes_mini):
    with pytest.raises(tfrecords.TFRecordError, match=r"clevr_with_masks"):
        convert_official("clevr6", tetrominoes_mini, str(tmp_path), progress=False)
    with pytest.raises(tfrecords.TFRecordError, match=r"multi_dsprites_colored_on_grayscale"):
        convert_official("multi_dsprites", tetrominoes_mini, str(tmp_path), progress=False)
    assert _leftovers(tmp_path) == []


def test_colored_on_colored_variant_is_rejected(tmp_path):
    rng = np.random.default_rng(0)
    payload, _ = multi_dsprites_record(rng, 3)
    # Same record but with 5 entities' worth of mask bytes (colored_on_colored layout).
    parsed = tfrecords.parse_example(payload)
    assert parsed["mask"][1].size == 64 * 64 * 6
    fields = dict(parsed)
    fields["mask"] = ("bytes", parsed["mask"][1].reshape(64, 64, 6)[:, :, :5])
    src = write_tfrecords(str(tmp_path / "coc.tfrecords"), [official_example(fields)])
    with pytest.raises(tfrecords.TFRecordError, match=r"feature 'mask' has 20480 elements"):
        convert_official("multi_dsprites", src, str(tmp_path / "r"), progress=False)
    assert _leftovers(tmp_path / "r") == []


def test_failure_midway_leaves_nothing(tmp_path):
    rng = np.random.default_rng(2)
    good = [multi_dsprites_record(rng, 2)[0] for _ in range(3)]
    src = str(tmp_path / "bad.tfrecords")
    write_tfrecords(src, good + [b"\x0a\x05short"])  # record 3 is not an Example
    root = tmp_path / "root"
    with pytest.raises(tfrecords.TFRecordError, match=r"bad.tfrecords record 3"):
        convert_official("multi_dsprites", src, str(root), progress=False)
    assert _leftovers(root) == []


def test_existing_folder_needs_overwrite(tmp_path, tetrominoes_mini):
    convert_official("tetrominoes", tetrominoes_mini, str(tmp_path), max_examples=2, progress=False)
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_official("tetrominoes", tetrominoes_mini, str(tmp_path), progress=False)
    convert_official("tetrominoes", tetrominoes_mini, str(tmp_path), overwrite=True, progress=False)
    assert json.load(open(tmp_path / "tetrominoes" / "meta.json"))["num_examples"] == 10
    assert _leftovers(tmp_path) == ["tetrominoes"]


@pytest.mark.slow
def test_tool_runs_as_a_script(tmp_path, tetrominoes_mini):
    root = tmp_path / "data"
    cmd = [sys.executable, "tools/prepare_data.py", "--dataset", "tetrominoes"]
    cmd += ["--tfrecords", tetrominoes_mini, "--root", str(root), "--max-examples", "3"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {root / 'tetrominoes'}"
    assert json.load(open(root / "tetrominoes" / "meta.json"))["num_examples"] == 3
