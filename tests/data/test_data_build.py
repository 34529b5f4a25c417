"""make_dataset: registry, splits, auto-generation, provenance, resizing."""

import json
import logging
import os

import numpy as np
import pytest
import torch

from lib.data import DATASET_REGISTRY, UnknownDatasetError, ensure_prepared, make_dataset
from lib.data import generators as gen_registry
from lib.data.generators import tetrominoes as tet
from lib.data.prepare import derived_test_seed, generate_dataset
from tests.data.conftest import data_cfg


def test_unknown_name_lists_known_names(tmp_path):
    with pytest.raises(UnknownDatasetError) as info:
        make_dataset("clevr7_train", data_cfg(tmp_path), True)
    message = str(info.value)
    for name in (
        "clevr6_train",
        "clevr10_test",
        "multi_dsprites",
        "tetrominoes_test",
        "folder:<path>",
    ):
        assert name in message


def test_missing_generated_dataset_is_generated_loudly(tmp_path, caplog):
    cfg = data_cfg(
        tmp_path,
        INPUT__IMAGE_SIZE=35,
        DATASETS__GENERATE_SIZE=12,
        DATASETS__TEST_SIZE=4,
        DATASETS__GENERATE_SEED=3,
    )
    with caplog.at_level(logging.WARNING):
        train = make_dataset("tetrominoes_train", cfg, True)
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert os.path.join(str(tmp_path), "tetrominoes") in warning
    assert "tools/prepare_data.py --dataset tetrominoes" in warning
    test = make_dataset("tetrominoes_test", cfg, False)
    assert (len(train), len(test)) == (12, 4)
    prov = test.provenance
    assert prov["source"] == "generated" and prov["seed"] == 3
    assert prov["generator"] == "lib.data.generators.tetrominoes"
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
        "tetrominoes", str(tmp_path), num_examples=5, seed=0, test_size=2, progress=False
    )
    cfg = data_cfg(
        tmp_path, INPUT__IMAGE_SIZE=35, DATASETS__GENERATE_SIZE=50, DATASETS__TEST_SIZE=2
    )
    with caplog.at_level(logging.WARNING):
        assert len(make_dataset("tetrominoes", cfg, False)) == 7
    assert not caplog.records


def test_test_size_mismatch_warns(tmp_path, caplog):
    generate_dataset(
        "tetrominoes", str(tmp_path), num_examples=5, seed=0, test_size=2, progress=False
    )
    cfg = data_cfg(tmp_path, INPUT__IMAGE_SIZE=35, DATASETS__TEST_SIZE=3)
    with caplog.at_level(logging.WARNING):
        assert len(make_dataset("tetrominoes_test", cfg, False)) == 3
    assert "DATASETS.TEST_SIZE" in caplog.text


def test_missing_without_generator_is_error(tmp_path, monkeypatch):
    monkeypatch.delitem(gen_registry.GENERATORS, "clevr6")
    with pytest.raises(FileNotFoundError, match=r"clevr6.*--tfrecords"):
        make_dataset("clevr6_train", data_cfg(tmp_path), True)
    assert not os.path.exists(tmp_path / "clevr6")


def test_folder_without_meta_is_error(tmp_path):
    os.makedirs(tmp_path / "tetrominoes")
    with pytest.raises(FileNotFoundError, match="no meta.json"):
        ensure_prepared("tetrominoes", data_cfg(tmp_path))


def test_bad_format_version(tmp_path):
    path = generate_dataset(
        "tetrominoes", str(tmp_path), num_examples=2, seed=0, test_size=1, progress=False
    )
    meta = json.load(open(os.path.join(path, "meta.json")))
    meta["format_version"] = 99
    json.dump(meta, open(os.path.join(path, "meta.json"), "w"))
    with pytest.raises(ValueError, match="format_version"):
        make_dataset("tetrominoes", data_cfg(tmp_path), False)


def test_resize_and_max_objects(tmp_path):
    generate_dataset(
        "multi_dsprites", str(tmp_path), num_examples=6, seed=1, test_size=2, progress=False
    )
    cfg = data_cfg(tmp_path, INPUT__IMAGE_SIZE=24, DATASETS__TEST_SIZE=2)
    ds = make_dataset("multi_dsprites_train", cfg, True)
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
    ds = make_dataset("multi_dsprites_train", cfg, True)
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
