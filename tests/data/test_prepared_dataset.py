"""lib.data.datasets.prepared.PreparedDataset, on folders written here by hand with np.save
(not by lib.prepare): splits, crops, item formats, factors, pickling and bad-input errors."""

from __future__ import annotations

import json
import logging
import os
import pickle

import numpy as np
import pytest
import torch

from lib.data.build import set_item_format
from lib.data.datasets.prepared import PreparedDataset
from lib.errors import DatasetError, MissingDatasetError
from tests.data.conftest import data_cfg

N, H, W = 5, 8, 8


def _arrays(n: int = N, h: int = H, w: int = W) -> tuple[np.ndarray, np.ndarray]:
    """Images whose pixels encode (example, row, col, channel) and label maps 0..2."""
    i, r, c, ch = np.meshgrid(np.arange(n), np.arange(h), np.arange(w), np.arange(3), indexing="ij")
    images = ((i * 50 + r * 7 + c * 3 + ch) % 256).astype(np.uint8)
    masks = ((np.arange(n)[:, None, None] + np.arange(h)[:, None] + np.arange(w)) % 3).astype(
        np.uint8
    )
    return images, masks


def _write_folder(root, dataset="sprites", num_test=2, crop=None, factors=None, **meta_extra):
    """A prepared folder as lib/data/format.py describes it, written with np.save and json."""
    images, masks = _arrays()
    path = os.path.join(root, dataset)
    os.makedirs(os.path.join(path, "factors"))
    np.save(os.path.join(path, "images.npy"), images)
    np.save(os.path.join(path, "masks.npy"), masks)
    factors = factors or {}
    for name, array in factors.items():
        np.save(os.path.join(path, "factors", f"{name}.npy"), array)
    meta = {
        "format_version": 1,
        "num_examples": N,
        "num_test": num_test,
        "source": "generated",
        "image_shape": [H, W, 3],
        "crop": crop,
        "factors": {k: {"shape": list(v.shape[1:])} for k, v in factors.items()},
        **meta_extra,
    }
    with open(os.path.join(path, "meta.json"), "w") as f:
        json.dump(meta, f)
    return path, images, masks


def _float(image_u8: np.ndarray) -> torch.Tensor:
    """The expected model input of a stored uint8 (H, W, 3) frame: (3, H, W) in [0, 1]."""
    return torch.from_numpy(image_u8.astype(np.float32) / 255).permute(2, 0, 1)


@pytest.mark.parametrize(
    "split, expected", [("all", [0, 1, 2, 3, 4]), ("train", [0, 1, 2]), ("test", [3, 4])]
)
def test_split_items_are_the_stored_examples(tmp_path, split, expected):
    _, images, masks = _write_folder(tmp_path, num_test=2)
    ds = PreparedDataset(data_cfg(tmp_path, INPUT__IMAGE_SIZE=H), False, "sprites", split)
    assert len(ds) == len(expected)
    assert ds.provenance["split_range"] == [expected[0], expected[-1] + 1]
    assert ds.provenance["split"] == split and ds.provenance["path"] == str(tmp_path / "sprites")
    for k, stored in enumerate(expected):
        image, mask = ds[k]
        assert image.dtype == torch.float32 and mask.dtype == torch.int64
        torch.testing.assert_close(image, _float(images[stored]), rtol=0, atol=1e-7)
        np.testing.assert_array_equal(mask.numpy(), masks[stored])
    # Negative indices count from the end of the split, not of the file.
    np.testing.assert_array_equal(ds[-1][1].numpy(), masks[expected[-1]])
    with pytest.raises(IndexError, match=f"index {len(expected)} out of range"):
        ds[len(expected)]


def test_recorded_crop_is_applied(tmp_path):
    _, images, masks = _write_folder(tmp_path, crop=[1, 5, 2, 6])
    ds = PreparedDataset(data_cfg(tmp_path, INPUT__IMAGE_SIZE=4), False, "sprites")
    assert ds.crop == (1, 5, 2, 6) and ds.native_size
    image, mask = ds[3]
    torch.testing.assert_close(image, _float(images[3, 1:5, 2:6]), rtol=0, atol=1e-7)
    np.testing.assert_array_equal(mask.numpy(), masks[3, 1:5, 2:6])
    # load_arrays returns the stored frame, uncropped.
    np.testing.assert_array_equal(ds.load_arrays(3)[0], images[3])


def test_return_uint8_only_without_resize(tmp_path):
    _, images, _ = _write_folder(tmp_path)
    native = PreparedDataset(data_cfg(tmp_path, INPUT__IMAGE_SIZE=H), False, "sprites")
    set_item_format(native, False, True)
    image, _ = native[2]
    assert native.return_uint8 and image.dtype == torch.uint8
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), images[2])
    resized = PreparedDataset(data_cfg(tmp_path, INPUT__IMAGE_SIZE=4), False, "sprites")
    set_item_format(resized, False, True)
    assert not resized.return_uint8 and resized[2][0].dtype == torch.float32


def test_factors_and_released_factor_items(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.random((N, 4)).astype(np.float32), rng.random((N, 4)).astype(np.float32)
    factors = {
        "x": x,
        "y": y,
        "color": rng.integers(0, 6, (N, 4)).astype(np.float32),
        "shape": rng.integers(0, 19, (N, 4)).astype(np.float32),
        "visibility": (rng.random((N, 4)) > 0.5).astype(np.float32),
    }
    _write_folder(tmp_path, dataset="tetrominoes", factors=factors)
    cfg = data_cfg(tmp_path, INPUT__IMAGE_SIZE=H)
    ds = PreparedDataset(cfg, False, "tetrominoes", "test")
    set_item_format(ds, True, False)
    assert ds.return_factors and ds.factor_mapping is not None
    np.testing.assert_array_equal(ds.factors(1)["x"], x[4])  # test split: stored index 3 + 1
    image, mask, released = ds[0]
    np.testing.assert_array_equal(released["position"].numpy(), np.stack([x[3], y[3]], axis=1))
    np.testing.assert_array_equal(released["visibility"].numpy(), factors["visibility"][3])
    np.testing.assert_array_equal(released["color"].numpy(), factors["color"][3][:, None])
    # Without return_factors the items keep the (image, mask) contract.
    assert len(PreparedDataset(cfg, False, "tetrominoes", "test")[0]) == 2


def test_factors_without_mapping_or_without_stored_factors(tmp_path, caplog):
    _write_folder(tmp_path, dataset="sprites", factors={"f": np.zeros((N, 2), np.float32)})
    _write_folder(tmp_path, dataset="tetrominoes")
    cfg = data_cfg(tmp_path, INPUT__IMAGE_SIZE=H)
    with caplog.at_level(logging.INFO):
        sprites = PreparedDataset(cfg, False, "sprites")
        tetrominoes = PreparedDataset(cfg, False, "tetrominoes")
    for ds in (sprites, tetrominoes):
        set_item_format(ds, True, False)
    assert "have no released mapping" in caplog.text
    assert "stores no factors" in caplog.text
    for ds in (sprites, tetrominoes):
        assert ds.factor_mapping is None and not ds.return_factors and len(ds[0]) == 2
    with pytest.raises(DatasetError, match=r"sprites: no factor mapping for dataset 'sprites'"):
        sprites.released_factors(0)


def test_pickle_reopens_the_memory_maps(tmp_path):
    _, _, masks = _write_folder(tmp_path)
    ds = PreparedDataset(data_cfg(tmp_path, INPUT__IMAGE_SIZE=H), False, "sprites", "train")
    state = ds.__getstate__()
    assert state["_images"] is None and state["_masks"] is None
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone[2][1].numpy(), masks[2])


def test_unknown_and_empty_split(tmp_path):
    _write_folder(tmp_path, num_test=0)
    cfg = data_cfg(tmp_path, INPUT__IMAGE_SIZE=H)
    with pytest.raises(DatasetError, match=r"split must be one of .*got 'val'"):
        PreparedDataset(cfg, False, "sprites", "val")
    assert len(PreparedDataset(cfg, False, "sprites", "train")) == N
    with pytest.raises(DatasetError, match=r"split 'test' of .*sprites is empty.*5 examples, 0"):
        PreparedDataset(cfg, False, "sprites", "test")


def test_missing_folder_names_the_folder_and_the_command(tmp_path):
    cfg = data_cfg(tmp_path, INPUT__IMAGE_SIZE=H)
    folder = os.path.join(str(tmp_path), "tetrominoes")
    with pytest.raises(MissingDatasetError, match=f"{folder} does not exist.*--tfrecords FILE"):
        PreparedDataset(cfg, False, "tetrominoes")
    with pytest.raises(MissingDatasetError, match=r"generate it with .*--dataset sprites"):
        PreparedDataset(cfg, False, "sprites")
    os.makedirs(tmp_path / "sprites")
    with pytest.raises(MissingDatasetError, match=r"sprites exists but has no meta.json"):
        PreparedDataset(cfg, False, "sprites")


@pytest.mark.parametrize("name", ["images", "masks"])
def test_array_file_disagreeing_with_meta_names_the_file(tmp_path, name):
    path, images, masks = _write_folder(tmp_path)
    np.save(os.path.join(path, f"{name}.npy"), (images if name == "images" else masks)[:4])
    with pytest.raises(
        DatasetError, match=rf"sprites/{name}\.npy has 4 examples, meta.json says 5"
    ):
        PreparedDataset(data_cfg(tmp_path, INPUT__IMAGE_SIZE=H), False, "sprites")


def test_max_objects_error_names_the_stored_example(tmp_path):
    path, images, masks = _write_folder(tmp_path)
    masks[4, 0, :4] = [1, 2, 3, 4]
    np.save(os.path.join(path, "masks.npy"), masks)
    cfg = data_cfg(tmp_path, INPUT__IMAGE_SIZE=H, DATASETS__MAX_OBJECTS=3)
    ds = PreparedDataset(cfg, False, "sprites", "test")
    ds[0]  # stored example 3: labels 0..2
    with pytest.raises(DatasetError, match=r"sprites example 4: label map has 4 objects"):
        ds[1]


@pytest.mark.parametrize(
    "content, match",
    [
        ("", "not valid JSON"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "a list, not a JSON object"),
        ('{"format_version": 7}', "format_version 7"),
        ('{"format_version": 1, "source": "generated", "image_shape": [8, 8, 3]}', "num_examples"),
    ],
)
def test_bad_meta_json_is_one_dataset_error(tmp_path, content, match):
    path, _, _ = _write_folder(tmp_path)
    with open(os.path.join(path, "meta.json"), "w") as f:
        f.write(content)
    with pytest.raises(DatasetError, match=match) as info:
        PreparedDataset(data_cfg(tmp_path, INPUT__IMAGE_SIZE=H), False, "sprites")
    assert "meta.json" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("num_test", [True, "2", 6, -1, 1.5])
def test_invalid_num_test(tmp_path, num_test):
    _write_folder(tmp_path, num_test=num_test)
    with pytest.raises(DatasetError, match=r"meta.json: num_test .* is not an integer"):
        PreparedDataset(data_cfg(tmp_path, INPUT__IMAGE_SIZE=H), False, "sprites", "test")


@pytest.mark.parametrize("damage", ["missing", "empty", "truncated", "garbage", "float32"])
@pytest.mark.parametrize("name", ["images", "masks"])
def test_bad_array_file_names_the_file(tmp_path, damage, name):
    path, images, masks = _write_folder(tmp_path)
    file = os.path.join(path, f"{name}.npy")
    if damage == "missing":
        os.remove(file)
    elif damage == "float32":  # read as uint8 it would be divided by 255 twice: refused
        np.save(file, (images if name == "images" else masks).astype(np.float32) / 255)
    else:
        data = open(file, "rb").read()
        cut = {"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"\x00junk" * 40}
        open(file, "wb").write(cut[damage])
    with pytest.raises(DatasetError) as info:
        PreparedDataset(data_cfg(tmp_path, INPUT__IMAGE_SIZE=H), False, "sprites")
    message = str(info.value)
    assert file in message and "prepare the dataset again" in message and "\n" not in message
    if damage == "float32":
        assert "float32" in message
