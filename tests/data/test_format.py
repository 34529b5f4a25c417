"""The prepared-folder format: the CLEVR crop as the reader applies it, and dataset names."""

import ast
import pathlib

import numpy as np
import pytest
import torch

import lib.data
from lib.data.format import BUILTIN_DATASETS, CLEVR_CROP, builtin_of
from tests.data.conftest import to_model_input


@pytest.fixture
def frame():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
    label = rng.integers(0, 7, size=(240, 320), dtype=np.uint8)
    return image, label


def test_clevr_crop_is_the_official_one(frame):
    # rows 29:221, cols 64:256 of the 240x320 frame (IODINE's released preprocessing).
    assert BUILTIN_DATASETS["clevr6"].crop == BUILTIN_DATASETS["clevr10"].crop == CLEVR_CROP
    image, label = frame
    out, mask = to_model_input(image, label, 192, CLEVR_CROP)
    expected = torch.from_numpy(image[29:221, 64:256]).permute(2, 0, 1).float() / 255
    assert torch.equal(out, expected)
    np.testing.assert_array_equal(mask.numpy(), label[29:221, 64:256])


def test_clevr_crop_then_resize_reads_only_the_crop(frame):
    image, label = frame
    out, mask = to_model_input(image, label, 128, CLEVR_CROP)
    # Label maps: nearest neighbour at pixel centres, source index floor((i + 0.5) * 1.5).
    idx = np.floor((np.arange(128) + 0.5) * 192 / 128).astype(int)
    np.testing.assert_array_equal(mask.numpy(), label[29:221, 64:256][idx][:, idx])
    # Pixels outside the crop change nothing.
    other, other_label = image.copy(), label.copy()
    other[:29], other[221:], other[:, :64], other[:, 256:] = 0, 255, 17, 99
    other_label[:29], other_label[:, 256:] = 9, 9
    out2, mask2 = to_model_input(other, other_label, 128, CLEVR_CROP)
    assert torch.equal(out, out2) and torch.equal(mask, mask2)
    # A constant crop stays constant under the antialiased bilinear resize.
    flat = np.full((240, 320, 3), 64, np.uint8)
    torch.testing.assert_close(
        to_model_input(flat, None, 64, CLEVR_CROP)[0], torch.full((3, 64, 64), 64 / 255)
    )


@pytest.mark.parametrize(
    "name,expected",
    [
        ("clevr6_train", "clevr6"),
        ("clevr10_test", "clevr10"),
        ("tetrominoes", "tetrominoes"),
        ("sprites5_train", "sprites5"),
        ("clevr7_train", None),
        ("folder:/data/clevr6_train", None),
        ("tetrominoes_val", None),
    ],
)
def test_builtin_of(name, expected):
    assert builtin_of(name) == expected


def test_reading_never_imports_the_writing_side():
    package = pathlib.Path(lib.data.__file__).parent
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            assert not any(n.startswith("lib.prepare") for n in names), path


def test_builtin_names_in_spec_are_the_registry_of_folders():
    from lib import spec

    assert tuple(BUILTIN_DATASETS) == spec.BUILTIN_NAMES
    assert set(spec.SYNTH_OF.values()) <= set(BUILTIN_DATASETS)
