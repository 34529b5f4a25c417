"""``hdf5:`` datasets: both layouts written here, exact pixels, labels, factors and splits."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lib.data.build import collate
from lib.data.datasets.external import EXTERNAL_PREFIXES, make_external_dataset
from lib.data.datasets.hdf5 import Hdf5Dataset, Hdf5FormatError
from lib.errors import DatasetError, MissingDatasetError
from tests.data.conftest import data_cfg

SIDE = 4


def _stamp(n: int, side: int = SIDE) -> np.ndarray:
    """uint8 (n, side, side, 3) images whose first pixel spells the index (base 256)."""
    images = np.random.default_rng(0).integers(0, 256, size=(n, side, side, 3), dtype=np.uint8)
    for c in range(3):
        images[:, 0, 0, c] = (np.arange(n) >> (8 * (2 - c))) & 255
    return images


def _index_of(image: torch.Tensor) -> int:
    pixels = (image * 255).round().to(torch.int64)
    return sum(int(pixels[c, 0, 0]) << (8 * (2 - c)) for c in range(3))


def _write_ocl(path, n: int, mask_4d: bool = True, num_objects=None, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    images = _stamp(n)
    labels = rng.integers(0, 7, size=(n, SIDE, SIDE), dtype=np.uint8)
    if num_objects is None:
        num_objects = rng.integers(2, 11, size=n)
    visibility = rng.integers(0, 2, size=(n, 11, 1)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f["image"] = images
        f["mask"] = labels[..., None] if mask_4d else labels
        f["num_actual_objects"] = np.asarray(num_objects, np.float32).reshape(n, 1)
        f["visibility"] = visibility
        f["shape"] = rng.integers(0, 4, size=(n, 11, 1))
    return {"images": images, "labels": labels, "visibility": visibility, "n": num_objects}


def _cfg(tmp_path, size: int = SIDE):
    return data_cfg(tmp_path, INPUT__IMAGE_SIZE=size)


def test_prefixes():
    assert EXTERNAL_PREFIXES == ("hdf5:", "clevrtex:")
    assert make_external_dataset("tetrominoes_train", None, True) is None
    assert make_external_dataset("folder:/x", None, True) is None


def test_ocl_default_splits_are_consecutive_train_val_test(tmp_path):
    n = 100_000
    path = tmp_path / "tetrominoes-full.hdf5"
    truth = _write_ocl(path, n)
    cfg = _cfg(tmp_path)
    train = make_external_dataset(f"hdf5:{path}", cfg, True)
    test = make_external_dataset(f"hdf5:{path}", cfg, False)
    val = make_external_dataset(f"hdf5:{path}:val", cfg, False)
    # The library's data_sizes 90,000 / 5,000 / 5,000 from index 0, train first.
    assert train.split == "train" and test.split == "test"
    np.testing.assert_array_equal(train.indices, np.arange(0, 90_000))
    np.testing.assert_array_equal(val.indices, np.arange(90_000, 95_000))
    np.testing.assert_array_equal(test.indices, np.arange(95_000, 100_000))
    assert (len(train), len(val), len(test)) == (90_000, 5_000, 5_000)
    for ds, k, i in ((train, 17, 17), (val, 0, 90_000), (test, 4_999, 99_999)):
        image, mask = ds[k]
        assert image.dtype == torch.float32 and image.shape == (3, SIDE, SIDE)
        assert mask.dtype == torch.int64 and mask.shape == (SIDE, SIDE)
        assert _index_of(image) == i
        expected = torch.from_numpy(truth["images"][i]).permute(2, 0, 1).float() / 255
        assert torch.equal(image, expected)
        np.testing.assert_array_equal(mask.numpy(), truth["labels"][i])
        np.testing.assert_array_equal(ds.factors(k)["visibility"], truth["visibility"][i])
    assert test.provenance["source"] == "hdf5" and test.provenance["layout"] == "ocl"
    assert test.has_masks and test.factor_mapping is None
    all_ = make_external_dataset(f"hdf5:{path}:all", cfg, True)
    assert len(all_) == n


def test_ocl_clevr6_variant_filters_then_splits(tmp_path):
    n = 100_000
    rng = np.random.default_rng(3)
    small = rng.permutation(n)[:53_483]  # the library's count of CLEVR6 scenes
    counts = np.full(n, 8)
    counts[small] = rng.integers(3, 7, size=len(small))
    path = tmp_path / "clevr_10-full.hdf5"
    _write_ocl(path, n, mask_4d=False, num_objects=counts)
    kept = [i for i in range(n) if counts[i] <= 6]  # independent: a loop
    cfg = _cfg(tmp_path)
    parts = {
        s: make_external_dataset(f"hdf5:{path}:clevr6:{s}", cfg, False)
        for s in ("train", "val", "test")
    }
    assert list(parts["train"].indices) == kept[:49_483]
    assert list(parts["val"].indices) == kept[49_483:51_483]
    assert list(parts["test"].indices) == kept[51_483:53_483]
    assert _index_of(parts["test"][0][0]) == kept[51_483]
    # Option order does not matter; the default of evaluation is the test split.
    other = make_external_dataset(f"hdf5:{path}:test:clevr6", cfg, False)
    assert list(other.indices) == kept[51_483:]
    assert list(make_external_dataset(f"hdf5:{path}:clevr6", cfg, False).indices) == kept[51_483:]
    # clevr_10 without the variant: 90K / 5K / 5K of all scenes.
    assert list(make_external_dataset(f"hdf5:{path}", cfg, False).indices) == list(
        range(95_000, 100_000)
    )


def test_ocl_explicit_sizes_and_unknown_name(tmp_path):
    path = tmp_path / "mine-full.hdf5"
    truth = _write_ocl(path, 20)
    cfg = _cfg(tmp_path)
    with pytest.raises(Hdf5FormatError, match="no default split sizes for 'mine'"):
        make_external_dataset(f"hdf5:{path}", cfg, True)
    ds = make_external_dataset(f"hdf5:{path}:sizes=12,3,5:val", cfg, True)
    assert list(ds.indices) == [12, 13, 14]
    np.testing.assert_array_equal(ds[2][1].numpy(), truth["labels"][14])
    with pytest.raises(Hdf5FormatError, match="need 21 examples but only 20"):
        make_external_dataset(f"hdf5:{path}:sizes=12,4,5", cfg, True)


def _write_emorl(path, splits: dict[str, int], k: int = 4, side: int = SIDE, seed: int = 2):
    rng = np.random.default_rng(seed)
    truth = {}
    with h5py.File(path, "w") as f:
        for split, n in splits.items():
            images = _stamp(n, side)
            owner = rng.integers(-1, k, size=(n, side, side))  # -1: no entity at all
            masks = np.zeros((n, k, side, side, 1), np.uint8)
            for e in range(k):
                masks[:, e, ..., 0] = np.where(owner == e, 255, 0)
            factors = rng.random((n, k, 5)).astype(np.float32)
            g = f.create_group(split)
            g["imgs"] = images
            g["masks"] = masks
            g["factors"] = factors
            truth[split] = {"images": images, "masks": masks, "factors": factors}
    return truth


def _labels_by_loop(masks: np.ndarray) -> np.ndarray:
    """Label map of (K, H, W, 1) 0/255 masks: the entity whose mask is set, else 0."""
    k, h, w, _ = masks.shape
    out = np.zeros((h, w), np.int64)
    for r in range(h):
        for c in range(w):
            for e in range(k):
                if masks[e, r, c, 0] == 255:
                    out[r, c] = e
    return out


def test_emorl_layout_groups_and_label_maps(tmp_path):
    path = tmp_path / "tetrominoes.h5"
    truth = _write_emorl(path, {"train": 6, "test": 3})
    cfg = _cfg(tmp_path)
    train = make_external_dataset(f"hdf5:{path}", cfg, True)
    test = make_external_dataset(f"hdf5:{path}", cfg, False)
    assert train.layout == "emorl" and (len(train), len(test)) == (6, 3)
    for ds, split in ((train, "train"), (test, "test")):
        for i in range(len(ds)):
            image, mask = ds[i]
            assert _index_of(image) == i
            assert torch.equal(
                image, torch.from_numpy(truth[split]["images"][i]).permute(2, 0, 1).float() / 255
            )
            np.testing.assert_array_equal(mask.numpy(), _labels_by_loop(truth[split]["masks"][i]))
            np.testing.assert_array_equal(ds.factors(i)["factors"], truth[split]["factors"][i])
    with pytest.raises(Hdf5FormatError, match=r"group 'val' is missing"):
        make_external_dataset(f"hdf5:{path}:val", cfg, True)


def test_emorl_clevr_frames_get_the_official_crop(tmp_path):
    path = tmp_path / "clevr6_with_masks_and_factors_test.h5"
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, size=(2, 240, 320, 3), dtype=np.uint8)
    masks = np.zeros((2, 3, 240, 320, 1), np.uint8)
    masks[:, 1, 50:100, 70:120] = 255
    masks[:, 2, 150:200, 200:250] = 255
    with h5py.File(path, "w") as f:
        f["test/imgs"] = images
        f["test/masks"] = masks
    ds = make_external_dataset(f"hdf5:{path}", _cfg(tmp_path, 192), False)
    assert not ds.factors(0)
    image, mask = ds[1]
    expected = torch.from_numpy(images[1, 29:221, 64:256]).permute(2, 0, 1).float() / 255
    assert torch.equal(image, expected)
    assert int(mask[50 - 29, 70 - 64]) == 1 and int(mask[150 - 29, 200 - 64]) == 2
    assert int(mask[0, 0]) == 0


def test_lazy_handle_pickles_and_works_in_workers(tmp_path):
    path = tmp_path / "tetrominoes.h5"
    _write_emorl(path, {"train": 8})
    ds = make_external_dataset(f"hdf5:{path}", _cfg(tmp_path), True)
    assert ds._h5 is None  # construction closed the file
    first = ds[0]
    assert ds._h5 is not None
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._h5 is None and torch.equal(clone[0][0], first[0])
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert [tuple(b[0].shape) for b in batches] == [(4, 3, SIDE, SIDE)] * 2
    assert [_index_of(img) for b in batches for img in b[0]] == list(range(8))
    ds.close()


def test_errors_name_file_and_key(tmp_path):
    cfg = _cfg(tmp_path)
    missing = tmp_path / "nope-full.hdf5"
    with pytest.raises(FileNotFoundError, match="nope-full.hdf5"):
        make_external_dataset(f"hdf5:{missing}", cfg, True)

    with pytest.raises(FileNotFoundError, match="options after the file are train"):
        make_external_dataset(f"hdf5:{missing}:tset", cfg, True)

    no_mask = tmp_path / "tetrominoes-full.hdf5"
    with h5py.File(no_mask, "w") as f:
        f["image"] = _stamp(3)
    with pytest.raises(Hdf5FormatError, match=r"tetrominoes-full\.hdf5: key 'mask' is missing"):
        make_external_dataset(f"hdf5:{no_mask}", cfg, True)

    bad_shape = tmp_path / "shapestacks-full.hdf5"
    with h5py.File(bad_shape, "w") as f:
        f["image"] = _stamp(3)
        f["mask"] = np.zeros((3, SIDE, SIDE, 2), np.uint8)
    with pytest.raises(Hdf5FormatError, match=r"shapestacks-full\.hdf5: key 'mask' has shape"):
        make_external_dataset(f"hdf5:{bad_shape}", cfg, True)

    bad_image = tmp_path / "clevrtex-full.hdf5"
    with h5py.File(bad_image, "w") as f:
        f["image"] = np.zeros((3, 3, SIDE, SIDE), np.uint8)  # channels first
        f["mask"] = np.zeros((3, SIDE, SIDE), np.uint8)
    with pytest.raises(Hdf5FormatError, match=r"clevrtex-full\.hdf5: key 'image' has shape"):
        make_external_dataset(f"hdf5:{bad_image}", cfg, True)

    emorl = tmp_path / "md.h5"
    with h5py.File(emorl, "w") as f:
        f["train/imgs"] = _stamp(2)
        f["train/masks"] = np.zeros((2, 4, SIDE + 1, SIDE, 1), np.uint8)
    with pytest.raises(Hdf5FormatError, match=r"md\.h5: key 'train/masks' has shape"):
        make_external_dataset(f"hdf5:{emorl}", cfg, True)

    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["pictures"] = _stamp(2)
    with pytest.raises(Hdf5FormatError, match=r"other\.h5: not a known HDF5 dataset layout"):
        Hdf5Dataset(cfg, True, str(other))

    ocl = tmp_path / "tetrominoes-full.hdf5"
    _write_ocl(ocl, 10)
    with pytest.raises(Hdf5FormatError, match="num_actual_objects <= 6|need"):
        make_external_dataset(f"hdf5:{ocl}:clevr6", cfg, True)
    with pytest.raises(ValueError, match="needs a file"):
        make_external_dataset("hdf5:", cfg, True)
    with pytest.raises(ValueError, match="more than one split"):
        make_external_dataset(f"hdf5:{ocl}:train:test", cfg, True)


@pytest.mark.parametrize("layout", ["ocl", "emorl"])
@pytest.mark.parametrize("scale", [1.0, 255.0])
def test_float_pixels_in_either_range_are_read_and_stated(tmp_path, layout, scale):
    path = tmp_path / ("tetrominoes-full.hdf5" if layout == "ocl" else "t.h5")
    images = _stamp(6)
    floats = images.astype(np.float32) * (scale / 255.0)
    with h5py.File(path, "w") as f:
        if layout == "ocl":
            f["image"], f["mask"] = floats, np.zeros((6, SIDE, SIDE, 1), np.uint8)
        else:
            f["train/imgs"] = floats
    ds = make_external_dataset(
        f"hdf5:{path}:all" if layout == "ocl" else f"hdf5:{path}", _cfg(tmp_path), True
    )
    for i in range(6):
        np.testing.assert_array_equal(ds.load_arrays(i)[0], images[i])
    assert ("[0, 1]" if scale == 1.0 else "[0, 255]") in ds.provenance["pixels"]


def test_non_finite_or_out_of_range_pixels_are_refused_with_the_index(tmp_path):
    images = _stamp(3).astype(np.float32)
    images[1, 2, 3, 1] = np.nan
    images[2, 0, 1, 0] = 300.0
    path = tmp_path / "t.h5"
    with h5py.File(path, "w") as f:
        f["train/imgs"] = images
    ds = make_external_dataset(f"hdf5:{path}", _cfg(tmp_path), True)
    with pytest.raises(
        DatasetError, match=r"t\.h5 key 'train/imgs' example 1: non-finite .* \(2, 3, 1\)"
    ):
        ds[1]
    with pytest.raises(DatasetError, match=r"example 2: pixel values in \[.*, 300\], outside"):
        ds[2]


def test_missing_file_is_a_missing_dataset_error(tmp_path):
    with pytest.raises(MissingDatasetError, match="no such file"):
        make_external_dataset(f"hdf5:{tmp_path}/absent.h5", _cfg(tmp_path), True)


def test_own_resize_protocols_and_the_library_tetrominoes_crop(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(2, 35, 35, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, size=(2, 35, 35), dtype=np.uint8)
    emorl, ocl = tmp_path / "t.h5", tmp_path / "tetrominoes-full.hdf5"
    with h5py.File(emorl, "w") as f:
        f["train/imgs"] = images
    with h5py.File(ocl, "w") as f:
        f["image"], f["mask"] = images, labels
    # EfficientMORL's own loader: PIL's default (bicubic) resize; stated in the provenance.
    ds = make_external_dataset(
        f"hdf5:{emorl}", data_cfg(tmp_path, INPUT__IMAGE_SIZE=20, INPUT__RESIZE=""), True
    )
    want = np.asarray(Image.fromarray(images[1]).resize((20, 20)))
    np.testing.assert_array_equal((ds[1][0] * 255).round().permute(1, 2, 0).numpy(), want)
    assert ds.provenance["resize"] == "pil_bicubic (the data's own protocol)"
    # INPUT.RESIZE set: the user's choice wins, and says so.
    forced = make_external_dataset(
        f"hdf5:{emorl}", data_cfg(tmp_path, INPUT__IMAGE_SIZE=20, INPUT__RESIZE="tf1"), True
    )
    assert forced.provenance["resize"] == "tf1 (INPUT.RESIZE)"
    # The object-centric library's Tetrominoes: rows and columns 2:34, 32x32, no resize.
    cfg = data_cfg(tmp_path, INPUT__IMAGE_SIZE=32, INPUT__CROP=(2, 34, 2, 34))
    image, mask = make_external_dataset(f"hdf5:{ocl}:all", cfg, True)[0]
    np.testing.assert_array_equal(
        (image * 255).round().permute(1, 2, 0).numpy(), images[0, 2:34, 2:34]
    )
    np.testing.assert_array_equal(mask.numpy(), labels[0, 2:34, 2:34])
    with pytest.raises(DatasetError, match=r"crop \(2, 40, 2, 40\) is not a square in 35x35"):
        make_external_dataset(
            f"hdf5:{ocl}:all", data_cfg(tmp_path, INPUT__CROP=(2, 40, 2, 40)), True
        )[0]


def test_float_pixels_that_overshoot_by_rounding_are_clipped_not_misread():
    from lib.data.datasets.base import checked_uint8, detect_scale

    image = np.array([[[0.0, 0.5, 1.0000001]], [[-1e-8, 0.25, 1.0]]], np.float32)  # [0, 1]
    scale, _ = detect_scale(image, "x.h5")
    assert scale == 255.0
    want = np.clip(np.rint(image.astype(np.float64) * 255), 0, 255)
    np.testing.assert_array_equal(checked_uint8(image, scale, "x.h5"), want)
    assert checked_uint8(image, scale, "x.h5").max() == 255
    with pytest.raises(DatasetError, match=r"outside \[0, 1\]"):
        checked_uint8(image + 0.1, scale, "x.h5")
