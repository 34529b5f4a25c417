"""make_dataset: registry, splits from meta.json, read-only errors, provenance, resizing."""

import json
import logging
import os

import numpy as np
import pytest
import torch

from lib.data import DATASET_REGISTRY, UnknownDatasetError, make_dataset
from lib.prepare import generate_dataset
from tests.data.conftest import data_cfg


def test_unknown_name_lists_known_names(tmp_path):
    with pytest.raises(UnknownDatasetError) as info:
        make_dataset("clevr7_train", data_cfg(tmp_path), True)
    message = str(info.value)
    for name in (
        "clevr6_train",
        "clevr10_test",
        "multi_dsprites_synth",
        "tetrominoes_synth_test",
        "folder:<path>",
    ):
        assert name in message


def test_missing_folder_is_an_error_naming_the_command(tmp_path):
    # Reading never generates: the tools call lib.prepare.prepare_missing first.
    with pytest.raises(FileNotFoundError) as info:
        make_dataset("tetrominoes_synth_train", data_cfg(tmp_path / "root"), True)
    message = str(info.value)
    assert os.path.join(str(tmp_path / "root"), "tetrominoes_synth") in message
    assert "tools/prepare_data.py --dataset tetrominoes" in message
    assert not os.path.exists(tmp_path / "root")


def test_split_follows_meta_not_config(tmp_path, caplog):
    path = generate_dataset(
        "tetrominoes_synth", str(tmp_path), num_examples=5, seed=0, test_size=2, progress=False
    )
    # DATASETS.TEST_SIZE is a preparation key: the split is meta.json's num_test.
    cfg = data_cfg(tmp_path, INPUT__IMAGE_SIZE=35, DATASETS__TEST_SIZE=3)
    full = make_dataset("tetrominoes_synth", cfg, False)
    with caplog.at_level(logging.WARNING):
        train = make_dataset("tetrominoes_synth_train", cfg, True)
        test = make_dataset("tetrominoes_synth_test", cfg, False)
    assert not caplog.records
    assert (len(full), len(train), len(test)) == (7, 5, 2)
    stored = np.load(os.path.join(path, "images.npy"))
    for i in range(2):
        np.testing.assert_array_equal(test.load_arrays(i)[0], stored[5 + i])
    assert test.provenance["split_range"] == [5, 7] and train.provenance["split_range"] == [0, 5]


def test_meta_without_num_test_falls_back_to_320(tmp_path, caplog):
    path = generate_dataset(
        "sprites", str(tmp_path), num_examples=3, seed=0, test_size=322, progress=False
    )
    meta_path = os.path.join(path, "meta.json")
    meta = json.load(open(meta_path))
    del meta["num_test"]
    json.dump(meta, open(meta_path, "w"))
    cfg = data_cfg(tmp_path, INPUT__IMAGE_SIZE=32)
    with caplog.at_level(logging.WARNING):
        test = make_dataset("sprites_test", cfg, False)
    assert len(test) == 320 and test.start == 5
    assert path in caplog.text and "num_test" in caplog.text
    assert len(make_dataset("sprites_train", cfg, True)) == 5


@pytest.mark.parametrize("num_test", [-1, 8, 1.5])
def test_bad_num_test_is_error(tmp_path, num_test):
    path = generate_dataset(
        "tetrominoes_synth", str(tmp_path), num_examples=4, seed=0, test_size=2, progress=False
    )
    meta = json.load(open(os.path.join(path, "meta.json")))
    meta["num_test"] = num_test
    json.dump(meta, open(os.path.join(path, "meta.json"), "w"))
    with pytest.raises(ValueError, match="num_test"):
        make_dataset("tetrominoes_synth_test", data_cfg(tmp_path), False)


def test_bad_format_version(tmp_path):
    path = generate_dataset(
        "tetrominoes_synth", str(tmp_path), num_examples=2, seed=0, test_size=1, progress=False
    )
    meta = json.load(open(os.path.join(path, "meta.json")))
    meta["format_version"] = 99
    json.dump(meta, open(os.path.join(path, "meta.json"), "w"))
    with pytest.raises(ValueError, match="format_version"):
        make_dataset("tetrominoes_synth", data_cfg(tmp_path), False)


def test_resize_and_max_objects(tmp_path):
    generate_dataset(
        "multi_dsprites_synth", str(tmp_path), num_examples=6, seed=1, test_size=2, progress=False
    )
    cfg = data_cfg(tmp_path, INPUT__IMAGE_SIZE=24, DATASETS__TEST_SIZE=2)
    ds = make_dataset("multi_dsprites_synth_train", cfg, True)
    for i in range(len(ds)):
        image, mask = ds[i]
        assert image.shape == (3, 24, 24) and mask.shape == (24, 24)
        assert image.min() >= 0 and image.max() <= 1
        stored_image, stored_mask = ds.load_arrays(i)
        assert set(mask.unique().tolist()) <= set(np.unique(stored_mask).tolist())
        # Antialiased downsampling keeps the mean colour (a plain subsample would not).
        mean = torch.tensor(stored_image).float().mean(dim=(0, 1)) / 255
        torch.testing.assert_close(image.mean(dim=(1, 2)), mean, atol=0.01, rtol=0)
    cfg.DATASETS.MAX_OBJECTS = 1
    ds = make_dataset("multi_dsprites_synth_train", cfg, True)
    with pytest.raises(ValueError, match=r"example \d+: label map has \d objects.*MAX_OBJECTS = 1"):
        for i in range(len(ds)):
            ds[i]


def test_user_registered_dataset(tmp_path, monkeypatch):
    class Constant(torch.utils.data.Dataset):
        def __init__(self, cfg, is_train, value):
            self.size, self.value = cfg.INPUT.IMAGE_SIZE, value

        def __len__(self):
            return 3

        def __getitem__(self, i):
            return torch.full((3, self.size, self.size), self.value), None

    monkeypatch.setitem(DATASET_REGISTRY, "constant", (Constant, {"value": 0.5}))
    ds = make_dataset("constant", data_cfg(tmp_path, INPUT__IMAGE_SIZE=8), True)
    assert ds[0][0].shape == (3, 8, 8) and ds[0][1] is None
