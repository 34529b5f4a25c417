"""uint8 images to the GPU: the same floats as the datasets' own conversion, only where lossless."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import ConcatDataset

from lib.config import get_cfg
from lib.data import make_dataset
from lib.engine.trainer import images_to_device, send_uint8
from lib.prepare import generate_dataset


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    generate_dataset(
        "tetrominoes", str(folder), num_examples=6, seed=0, test_size=2, progress=False, workers=1
    )
    return str(folder)


def _dataset(root, size):
    cfg = get_cfg()
    cfg.DATASETS.ROOT = root
    cfg.INPUT.IMAGE_SIZE = size
    return make_dataset("tetrominoes_train", cfg, True)


def test_uint8_items_convert_to_the_float_items(root):
    floats = _dataset(root, 35)
    raw = _dataset(root, 35)
    assert send_uint8(raw, torch.device("cuda"))  # only the device type is read
    for i in range(len(raw)):
        image, mask = raw[i]
        expected_image, expected_mask = floats[i]
        assert image.dtype == torch.uint8 and image.shape == (3, 35, 35)
        stored = raw.load_arrays(i)[0]  # (H, W, 3) as written
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), stored)
        assert torch.equal(images_to_device(image[None], torch.device("cpu"))[0], expected_image)
        assert torch.equal(mask, expected_mask)


def test_only_on_cuda_and_only_without_resize(root):
    assert not send_uint8(_dataset(root, 35), torch.device("cpu"))
    resized = _dataset(root, 32)
    assert not send_uint8(resized, torch.device("cuda"))
    assert resized[0][0].dtype == torch.float32
    mixed = ConcatDataset([_dataset(root, 35), resized])
    assert not send_uint8(mixed, torch.device("cuda"))
    assert mixed[0][0].dtype == torch.float32
