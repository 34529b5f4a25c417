"""``clevrtex:`` datasets: the benchmark's layout written here, its splits, crop and errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from lib.data.datasets.clevrtex import ClevrTexError, clevrtex_crop
from lib.data.datasets.external import make_external_dataset
from lib.errors import MissingDatasetError
from tests.data.conftest import data_cfg

H, W = 240, 320


def _scene(number: int) -> tuple[np.ndarray, np.ndarray]:
    """RGBA image (smooth, so the PNG is small) and label map of scene ``number``."""
    rows, cols = np.mgrid[0:H, 0:W]
    image = np.empty((H, W, 4), np.uint8)
    image[..., 0] = (rows + number) % 256
    image[..., 1] = (cols * 3 + number) % 256
    image[..., 2] = number
    image[..., 3] = 255 - number  # alpha: dropped, as the reference loader does
    label = np.zeros((H, W), np.uint8)
    for k in range(1, 1 + number % 4 + 1):
        r, c = 20 + 40 * k, 30 + 50 * k + number
        label[r : r + 30, c : c + 40] = k
    return image, label


def _write_variant(root, variant: str, n: int, per_folder: int = 10, json_too: bool = True) -> str:
    """``root/clevrtex_<variant>/<n // per_folder>/CLEVRTEX_<variant>_NNNNNN{.png,_flat.png}``."""
    base = os.path.join(root, f"clevrtex_{variant}")
    for i in range(n):
        folder = os.path.join(base, str(i // per_folder))
        os.makedirs(folder, exist_ok=True)
        image, label = _scene(i)
        stem = os.path.join(folder, f"CLEVRTEX_{variant}_{i:06d}")
        Image.fromarray(image, "RGBA").save(stem + ".png", compress_level=1)
        Image.fromarray(label, "L").save(stem + "_flat.png", compress_level=1)
        if json_too:
            with open(stem + ".json", "w") as f:
                json.dump({"image_index": i, "objects": [], "ground_material": "x"}, f)
    return base


@pytest.fixture(scope="module")
def clevrtex_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("clevrtex"))
    _write_variant(root, "full", 23)
    _write_variant(root, "outd", 3, json_too=False)
    return root


def _numbers(ds) -> list[int]:
    # Scene number from the image's blue channel (= number) at the model size (no resize).
    return [int(round(float(ds[i][0][2, 0, 0]) * 255)) for i in range(len(ds))]


def test_benchmark_splits_by_fractions(clevrtex_root):
    cfg = data_cfg(clevrtex_root, INPUT__IMAGE_SIZE=192)
    parts = {
        s: make_external_dataset(f"clevrtex:{clevrtex_root}:{s}", cfg, False)
        for s in ("train", "val", "test", "all")
    }
    # 23 scenes: test [0, int(2.3)), val [int(2.3), int(4.6)), train [int(4.6), 23).
    assert parts["test"].scene_numbers == [0, 1]
    assert parts["val"].scene_numbers == [2, 3]
    assert parts["train"].scene_numbers == list(range(4, 23))
    assert parts["all"].scene_numbers == list(range(23))
    assert _numbers(parts["test"]) == [0, 1] and _numbers(parts["val"]) == [2, 3]
    assert _numbers(parts["train"])[:3] == [4, 5, 6]
    # Default split: train for training, test for evaluation; variant full by default.
    assert make_external_dataset(f"clevrtex:{clevrtex_root}", cfg, True).scene_numbers[0] == 4
    default_test = make_external_dataset(f"clevrtex:{clevrtex_root}", cfg, False)
    assert default_test.scene_numbers == [0, 1] and default_test.variant == "full"
    assert default_test.provenance["source"] == "clevrtex"
    assert default_test.provenance["split_range"] == [0, 2]


def test_reference_crop_pixels_and_labels(clevrtex_root):
    assert clevrtex_crop(240, 320) == (24, 216, 64, 256)
    cfg = data_cfg(clevrtex_root, INPUT__IMAGE_SIZE=192)
    ds = make_external_dataset(f"clevrtex:{clevrtex_root}/clevrtex_full:train", cfg, True)
    for i in (0, 7):
        number = ds.scene_numbers[i]
        image, label = _scene(number)
        got_image, got_mask = ds[i]
        assert got_image.dtype == torch.float32 and got_image.shape == (3, 192, 192)
        assert got_mask.dtype == torch.int64 and got_mask.shape == (192, 192)
        expected = torch.from_numpy(image[24:216, 64:256, :3].copy()).permute(2, 0, 1) / 255
        assert torch.equal(got_image, expected.float())
        np.testing.assert_array_equal(got_mask.numpy(), label[24:216, 64:256])
    assert ds.metadata(0)["image_index"] == ds.scene_numbers[0]
    # At the benchmark's 128: nearest-neighbour labels from the 192 crop.
    small = make_external_dataset(
        f"clevrtex:{clevrtex_root}:test", data_cfg(clevrtex_root, INPUT__IMAGE_SIZE=128), False
    )
    image, mask = small[1]
    assert image.shape == (3, 128, 128) and set(mask.unique().tolist()) <= {0, 1, 2}


def test_outd_has_no_split(clevrtex_root):
    cfg = data_cfg(clevrtex_root, INPUT__IMAGE_SIZE=192)
    ds = make_external_dataset(f"clevrtex:{clevrtex_root}:outd", cfg, False)
    assert ds.variant == "outd" and ds.scene_numbers == [0, 1, 2]
    by_folder = make_external_dataset(f"clevrtex:{clevrtex_root}/clevrtex_outd", cfg, False)
    assert by_folder.variant == "outd" and len(by_folder) == 3
    with pytest.raises(ClevrTexError, match="no split"):
        make_external_dataset(f"clevrtex:{clevrtex_root}:outd:train", cfg, True)


def test_errors_name_the_files(tmp_path):
    cfg = data_cfg(tmp_path, INPUT__IMAGE_SIZE=192)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        make_external_dataset(f"clevrtex:{tmp_path}/absent", cfg, True)
    with pytest.raises(FileNotFoundError, match="clevrtex_camo"):
        make_external_dataset(f"clevrtex:{tmp_path}:camo", cfg, True)
    base = _write_variant(str(tmp_path), "pbg", 4, json_too=False)
    os.remove(os.path.join(base, "0", "CLEVRTEX_pbg_000002_flat.png"))
    with pytest.raises(FileNotFoundError, match=r"CLEVRTEX_pbg_000002_flat\.png"):
        make_external_dataset(f"clevrtex:{tmp_path}:pbg", cfg, True)
    base = _write_variant(str(tmp_path), "vbg", 4, json_too=False)
    for suffix in (".png", "_flat.png"):
        os.remove(os.path.join(base, "0", f"CLEVRTEX_vbg_000001{suffix}"))
    with pytest.raises(ClevrTexError, match=r"missing \[1\]"):
        make_external_dataset(f"clevrtex:{tmp_path}:vbg", cfg, True)
    with pytest.raises(ValueError, match="more than one variant"):
        make_external_dataset(f"clevrtex:{tmp_path}:vbg:pbg", cfg, True)


def test_own_protocol_is_pil_bilinear_and_nearest(clevrtex_root):
    # ClevrTex's loader: crop, then PIL bilinear (images) and nearest (labels) to 128, 8 bits.
    cfg = data_cfg(clevrtex_root, INPUT__IMAGE_SIZE=128, INPUT__RESIZE="")
    ds = make_external_dataset(f"clevrtex:{clevrtex_root}:test", cfg, False)
    assert ds.provenance["resize"] == "pil_bilinear (the data's own protocol)"
    for i in range(len(ds)):
        image, mask = ds[i]
        im = Image.open(ds.files[i]).crop((64, 24, 256, 216))
        # Alpha dropped first (ClevrTex drops it after the resize: the same for opaque images).
        want = np.asarray(im.convert("RGB").resize((128, 128), Image.BILINEAR))
        np.testing.assert_array_equal((image * 255).round().permute(1, 2, 0).numpy(), want)
        labels = Image.open(ds.mask_files[i]).crop((64, 24, 256, 216))
        np.testing.assert_array_equal(
            mask.numpy(), np.asarray(labels.resize((128, 128), Image.NEAREST))
        )


def test_missing_or_wrong_folder_is_a_missing_dataset_error(tmp_path):
    # MissingDatasetError is an IodineError: the tools print it as one line.
    with pytest.raises(MissingDatasetError, match="no such folder"):
        make_external_dataset(f"clevrtex:{tmp_path}/absent", data_cfg(tmp_path), True)
    with pytest.raises(MissingDatasetError, match="give the clevrtex_<variant> folder"):
        make_external_dataset(f"clevrtex:{tmp_path}", data_cfg(tmp_path), True)
    os.makedirs(tmp_path / "clevrtex_full")
    with pytest.raises(MissingDatasetError, match="no CLEVRTEX_full_NNNNNN.png"):
        make_external_dataset(f"clevrtex:{tmp_path}", data_cfg(tmp_path), True)
