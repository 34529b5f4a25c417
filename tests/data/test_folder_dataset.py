"""lib.data.datasets.folder.FolderDataset (``folder:<path>``), imported directly: PNG/JPEG files
written here with PIL, read back exactly; with and without masks, crops, every bad-input error."""

import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from lib.data import make_dataset
from lib.data.datasets.base import ItemFormat
from lib.data.datasets.folder import FolderDataset
from tests.data.conftest import data_cfg


def _write(folder, names, size=(16, 16), masks=True, mask_mode="L", seed=0):
    """PNG images (and label maps with labels 0..2) of ``size`` (H, W); returns the arrays."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder / "images", exist_ok=True)
    if masks:
        os.makedirs(folder / "masks", exist_ok=True)
    arrays = {}
    for name in names:
        image = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
        label = rng.integers(0, 3, size=size, dtype=np.uint8)
        Image.fromarray(image).save(folder / "images" / name)
        if masks:
            m = Image.fromarray(label, mode="L")
            if mask_mode == "P":
                m = m.convert("P")
                m.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (253 * 3))
            m.save(folder / "masks" / name)
        arrays[name] = (image, label)
    return arrays


def _u8(image):
    return (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


@pytest.mark.parametrize("mode", ["L", "P"])
def test_folder_with_masks_sorted_exact(tmp_path, mode):
    names = ["b.png", "a.png", "10.png", "2.png"]
    arrays = _write(tmp_path, names, mask_mode=mode)
    ds = FolderDataset(data_cfg(tmp_path, INPUT__IMAGE_SIZE=16), False, str(tmp_path))
    assert [os.path.basename(f) for f in ds.files] == ["10.png", "2.png", "a.png", "b.png"]
    assert ds.has_masks and ds.provenance["source"] == "folder" and len(ds) == 4
    for i, name in enumerate(sorted(names)):
        image, mask = ds[i]
        np.testing.assert_array_equal(_u8(image), arrays[name][0])
        assert mask.dtype == torch.int64
        np.testing.assert_array_equal(mask.numpy(), arrays[name][1])


def test_non_square_is_centre_cropped(tmp_path):
    arrays = _write(tmp_path, ["x.png"], size=(10, 24))
    ds = FolderDataset(data_cfg(tmp_path, INPUT__IMAGE_SIZE=10), False, str(tmp_path))
    image, mask = ds[0]
    np.testing.assert_array_equal(_u8(image), arrays["x.png"][0][:, 7:17])
    np.testing.assert_array_equal(mask.numpy(), arrays["x.png"][1][:, 7:17])
    ds = FolderDataset(data_cfg(tmp_path, INPUT__IMAGE_SIZE=20), False, str(tmp_path))
    image, mask = ds[0]
    assert image.shape == (3, 20, 20) and mask.shape == (20, 20)
    # Nearest-neighbour upsampling by 2: every source label repeated in 2x2 blocks.
    np.testing.assert_array_equal(mask.numpy()[::2, ::2], arrays["x.png"][1][:, 7:17])


@pytest.mark.parametrize("size", [16, 13])
def test_nearest_resize_samples_image_and_labels_alike(tmp_path, size):
    arrays = _write(tmp_path, ["x.png"], size=(32, 32))
    image_u8, label = arrays["x.png"]
    cfg = data_cfg(tmp_path, INPUT__IMAGE_SIZE=size, INPUT__RESIZE="nearest")
    image, mask = FolderDataset(cfg, False, str(tmp_path))[0]
    # Pixel centres: output pixel i samples source row floor((i + 0.5) * 32 / size).
    src = [int((i + 0.5) * 32 / size) for i in range(size)]
    np.testing.assert_array_equal(mask.numpy(), label[np.ix_(src, src)])
    np.testing.assert_array_equal(_u8(image), image_u8[np.ix_(src, src)])
    # The default antialiased bilinear blends neighbours: most pixels match no source pixel.
    image, _ = FolderDataset(data_cfg(tmp_path, INPUT__IMAGE_SIZE=size), False, str(tmp_path))[0]
    exact = (_u8(image) == image_u8[np.ix_(src, src)]).all(axis=2)
    assert exact.mean() < 0.5


def test_unknown_resize_is_config_error(tmp_path):
    with pytest.raises(ValueError, match="INPUT.RESIZE"):
        ItemFormat.from_cfg(data_cfg(tmp_path, INPUT__RESIZE="area"), True, "folder")


def test_folder_without_masks(tmp_path, caplog):
    _write(tmp_path, ["a.png", "b.png"], masks=False)
    with caplog.at_level(logging.WARNING):
        ds = FolderDataset(data_cfg(tmp_path, INPUT__IMAGE_SIZE=16), True, str(tmp_path))
    assert "ARI will not be computed" in caplog.text
    image, mask = ds[1]
    assert image.shape == (3, 16, 16) and mask is None
    assert ds.has_masks is False and ds.provenance["has_masks"] is False


def test_rgba_and_grey_images_become_rgb(tmp_path):
    os.makedirs(tmp_path / "images")
    Image.fromarray(np.full((8, 8, 4), 200, np.uint8), mode="RGBA").save(
        tmp_path / "images" / "a.png"
    )
    Image.fromarray(np.full((8, 8), 100, np.uint8), mode="L").save(tmp_path / "images" / "b.png")
    ds = FolderDataset(data_cfg(tmp_path, INPUT__IMAGE_SIZE=8), False, str(tmp_path))
    assert ds[0][0].shape == (3, 8, 8) and (_u8(ds[1][0]) == 100).all()


def _cfg(tmp_path, **kw):
    return data_cfg(tmp_path, INPUT__IMAGE_SIZE=16, **kw)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        FolderDataset(_cfg(tmp_path), True, str(tmp_path / "nope"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="images"):
        FolderDataset(_cfg(tmp_path), True, str(tmp_path / "empty"))
    os.makedirs(tmp_path / "empty" / "images")
    with pytest.raises(FileNotFoundError, match=r"no \*\.png"):
        FolderDataset(_cfg(tmp_path), True, str(tmp_path / "empty"))


def test_truncated_png(tmp_path):
    _write(tmp_path, ["a.png", "b.png"], size=(32, 32))
    path = tmp_path / "images" / "b.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    ds = FolderDataset(_cfg(tmp_path), True, str(tmp_path))
    ds[0]
    with pytest.raises(ValueError, match=r"b\.png: cannot decode the image, truncated"):
        ds[1]


def test_not_a_png(tmp_path):
    _write(tmp_path, ["a.png"])
    (tmp_path / "images" / "junk.png").write_bytes(b"not an image")
    (tmp_path / "masks" / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"junk\.png: cannot read the image header"):
        FolderDataset(_cfg(tmp_path), True, str(tmp_path))


def test_mask_size_mismatch(tmp_path):
    _write(tmp_path, ["a.png"])
    Image.fromarray(np.zeros((16, 15), np.uint8)).save(tmp_path / "masks" / "a.png")
    with pytest.raises(ValueError, match=r"masks/a\.png: mask is 15x16 \(WxH\) but its image"):
        FolderDataset(_cfg(tmp_path), True, str(tmp_path))


def test_mask_wrong_mode(tmp_path):
    _write(tmp_path, ["a.png"])
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "masks" / "a.png")
    with pytest.raises(ValueError, match=r"a\.png: mask has PIL mode 'RGB'"):
        FolderDataset(_cfg(tmp_path), True, str(tmp_path))
    Image.fromarray(np.zeros((16, 16), np.uint16)).save(tmp_path / "masks" / "a.png")
    with pytest.raises(ValueError, match=r"mask has PIL mode 'I;16"):
        FolderDataset(_cfg(tmp_path), True, str(tmp_path))


def test_missing_mask_file(tmp_path):
    _write(tmp_path, ["a.png", "b.png"])
    os.remove(tmp_path / "masks" / "b.png")
    with pytest.raises(FileNotFoundError, match=r"b\.png has no mask"):
        FolderDataset(_cfg(tmp_path), True, str(tmp_path))


def test_too_many_objects(tmp_path):
    _write(tmp_path, ["a.png"])
    label = np.zeros((16, 16), np.uint8)
    label[0, :4] = [1, 2, 3, 7]
    Image.fromarray(label).save(tmp_path / "masks" / "a.png")
    assert FolderDataset(_cfg(tmp_path), True, str(tmp_path))[0][1].max() == 7  # no limit
    ds = FolderDataset(_cfg(tmp_path, DATASETS__MAX_OBJECTS=3), True, str(tmp_path))
    with pytest.raises(ValueError, match=r"a\.png: label map has 4 objects.*MAX_OBJECTS = 3"):
        ds[0]


def test_flat_layout_without_images_folder(tmp_path):
    # The older port's layout: <path>/*.png, used when <path>/images/ does not exist.
    rng = np.random.default_rng(3)
    arrays = {}
    for name in ("b.png", "a.png", "c.PNG"):
        arrays[name] = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
        Image.fromarray(arrays[name]).save(tmp_path / name, format="PNG")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = FolderDataset(_cfg(tmp_path), True, str(tmp_path))
    assert [os.path.basename(f) for f in ds.files] == ["a.png", "b.png", "c.PNG"]
    assert ds.layout == ds.provenance["layout"] == "flat" and not ds.has_masks
    for i, name in enumerate(["a.png", "b.png", "c.PNG"]):
        image, mask = ds[i]
        assert mask is None
        np.testing.assert_array_equal(_u8(image), arrays[name])


@pytest.mark.parametrize("layout", ["images", "flat"])
def test_jpeg_matches_pil_decode_and_mixed_extensions_sort_by_name(tmp_path, layout):
    rng = np.random.default_rng(4)
    folder = tmp_path / "images" if layout == "images" else tmp_path
    os.makedirs(folder, exist_ok=True)
    os.makedirs(tmp_path / "masks")
    labels = {}
    for name in ("b.jpg", "a.png", "c.jpeg", "a2.JPG"):
        smooth = np.kron(rng.integers(0, 256, size=(4, 4, 3)), np.ones((4, 4, 1)))
        Image.fromarray(smooth.astype(np.uint8)).save(folder / name, quality=90)
        stem = os.path.splitext(name)[0]
        labels[stem] = rng.integers(0, 3, size=(16, 16), dtype=np.uint8)
        Image.fromarray(labels[stem], mode="L").save(tmp_path / "masks" / f"{stem}.png")
    ds = FolderDataset(_cfg(tmp_path), True, str(tmp_path))
    order = ["a.png", "a2.JPG", "b.jpg", "c.jpeg"]
    assert [os.path.basename(f) for f in ds.files] == order
    assert ds.layout == layout and ds.has_masks
    for i, name in enumerate(order):
        image, mask = ds[i]
        with Image.open(folder / name) as im:
            expected = np.asarray(im.convert("RGB"))  # PIL's own decode, lossy for JPEG
        np.testing.assert_array_equal(_u8(image), expected)
        np.testing.assert_array_equal(mask.numpy(), labels[os.path.splitext(name)[0]])


def test_empty_folder_is_clear_error(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(
        FileNotFoundError, match=r"no \*\.png, \*\.jpg or \*\.jpeg image in .*no images/"
    ):
        FolderDataset(_cfg(tmp_path), True, str(tmp_path))


def test_two_images_of_one_stem_with_masks_is_error(tmp_path):
    _write(tmp_path, ["a.png"])
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "images" / "a.jpg")
    with pytest.raises(ValueError, match=r"\['a'\] exist with several extensions"):
        FolderDataset(_cfg(tmp_path), True, str(tmp_path))


def test_registry_builds_a_folder_dataset(tmp_path):
    _write(tmp_path, ["a.png"])
    ds = make_dataset(f"folder:{tmp_path}", _cfg(tmp_path), False)
    assert isinstance(ds, FolderDataset) and ds.root == str(tmp_path)


def test_provenance_and_stored_size_arrays(tmp_path):
    arrays = _write(tmp_path, ["b.png", "a.png"], size=(6, 10))
    ds = FolderDataset(_cfg(tmp_path, INPUT__RESIZE=""), False, str(tmp_path))
    assert ds.provenance == {
        "source": "folder",
        "path": os.path.abspath(tmp_path),
        "layout": "images",
        "num_examples": 2,
        "has_masks": True,
        "resize": "bilinear (the data's own protocol)",
        "labels_at": "16 (model input)",
    }
    assert ds.mask_files == [str(tmp_path / "masks" / "a.png"), str(tmp_path / "masks" / "b.png")]
    # load_arrays: the file as stored (uint8, no crop, no resize).
    image, mask = ds.load_arrays(1)
    assert image.dtype == np.uint8 and mask.dtype == np.uint8
    np.testing.assert_array_equal(image, arrays["b.png"][0])
    np.testing.assert_array_equal(mask, arrays["b.png"][1])
