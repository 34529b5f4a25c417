"""Factor regressor inputs read from a prepared folder (``released_factors``)."""

import json
import os

import numpy as np
import pytest
import torch

from lib.data.build import collate, make_dataset
from lib.data.format import FACTOR_MAPPINGS, factor_mapping, released_factors

from .conftest import data_cfg


def _write_folder(root, dataset, factors, n=4, size=8, source="official"):
    path = os.path.join(root, dataset)
    os.makedirs(os.path.join(path, "factors"))
    np.save(os.path.join(path, "images.npy"), np.zeros((n, size, size, 3), np.uint8))
    np.save(os.path.join(path, "masks.npy"), np.zeros((n, size, size), np.uint8))
    for name, array in factors.items():
        np.save(os.path.join(path, "factors", f"{name}.npy"), array)
    meta = {
        "format_version": 1,
        "num_examples": n,
        "num_test": 2,
        "source": source,
        "image_shape": [size, size, 3],
        "factors": {k: {"shape": list(v.shape[1:])} for k, v in factors.items()},
    }
    with open(os.path.join(path, "meta.json"), "w") as f:
        json.dump(meta, f)


def test_mapping_by_name():
    assert factor_mapping("clevr6_train") == FACTOR_MAPPINGS["clevr"]
    assert factor_mapping("multi_dsprites_test")[-1] == ("orientation", 2, "angle")
    assert factor_mapping("folder:/x") is None and factor_mapping("sprites") is None


def test_clevr_generated_indices_shift_to_the_official_layout_and_use_the_real_size():
    stored = {
        "color": np.array([-1, 0, 7]),
        "shape": np.array([-1, 2, 0]),
        "size": np.array([-1, 1, 0]),
        "pixel_coords": np.arange(9, dtype=np.float32).reshape(3, 3),
        "visibility": np.array([1, 1, 0], np.float32),
    }
    out = released_factors("clevr6", "generated", stored)
    assert out["color"][:, 0].tolist() == [0, 1, 8]
    assert out["shape"][:, 0].tolist() == [0, 3, 1]
    assert out["size"][:, 0].tolist() == [0, 2, 1]  # the real size, not the release's colour
    assert out["position"].tolist() == stored["pixel_coords"].tolist()
    official = released_factors("clevr6", "official", stored)
    assert official["color"][:, 0].tolist() == [-1, 0, 7]
    with pytest.raises(ValueError, match="factors/color.npy is missing"):
        released_factors("clevr6", "official", {"visibility": stored["visibility"]})


def test_tetrominoes_items_and_collate_carry_factors(tmp_path):
    rng = np.random.default_rng(0)
    factors = {
        "x": rng.random((4, 4), dtype=np.float32),
        "y": rng.random((4, 4), dtype=np.float32),
        "shape": rng.integers(0, 20, (4, 4)).astype(np.float32),
        "color": rng.random((4, 4, 3), dtype=np.float32),
        "visibility": np.ones((4, 4), np.float32),
    }
    _write_folder(tmp_path, "tetrominoes", factors)
    cfg = data_cfg(tmp_path, INPUT__IMAGE_SIZE=8)
    ds = make_dataset("tetrominoes_train", cfg, True)
    assert len(ds[0]) == 2  # the contract's (image, mask) unless asked
    assert ds.factor_mapping == FACTOR_MAPPINGS["tetrominoes"]
    ds.return_factors = True
    images, masks, batch = collate([ds[0], ds[1]])
    assert images.shape == (2, 3, 8, 8) and masks.shape == (2, 8, 8)
    expected = np.stack([factors["x"][:2], factors["y"][:2]], axis=-1)
    assert torch.equal(batch["position"], torch.from_numpy(expected))
    assert torch.equal(batch["color"], torch.from_numpy(factors["color"][:2]))
    assert batch["shape"].shape == (2, 4, 1) and batch["visibility"].shape == (2, 4)


def test_folder_without_factors_has_no_mapping(tmp_path):
    _write_folder(tmp_path, "tetrominoes", {})
    ds = make_dataset("tetrominoes", data_cfg(tmp_path, INPUT__IMAGE_SIZE=8), False)
    assert ds.factor_mapping is None
