"""uint8 images to the GPU: the same floats as the datasets' own conversion, only where lossless."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.config import get_cfg
from lib.data import make_data_loader, make_dataset
from lib.engine.trainer import images_to_device
from lib.prepare import generate_dataset


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    for name in ("tetrominoes_synth", "multi_dsprites_synth"):
        generate_dataset(
            name, str(folder), num_examples=6, seed=0, test_size=2, progress=False, workers=1
        )
    return str(folder)


def _cfg(root, size):
    cfg = get_cfg()
    cfg.DATASETS.ROOT = root
    cfg.INPUT.IMAGE_SIZE = size
    cfg.DATALOADER.NUM_WORKERS = 0
    return cfg


def _dataset(root, size, uint8=False, name="tetrominoes_synth_train"):
    return make_dataset(name, _cfg(root, size), True, uint8_images=uint8)


def test_uint8_items_convert_to_the_float_items(root):
    floats = _dataset(root, 35)
    raw = _dataset(root, 35, uint8=True)
    assert raw.return_uint8 and not floats.return_uint8
    for i in range(len(raw)):
        image, mask = raw[i]
        expected_image, expected_mask = floats[i]
        assert image.dtype == torch.uint8 and image.shape == (3, 35, 35)
        stored = raw.load_arrays(i)[0]  # (H, W, 3) as written
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), stored)
        assert torch.equal(images_to_device(image[None], torch.device("cpu"))[0], expected_image)
        assert torch.equal(mask, expected_mask)


def test_only_without_resize_and_for_the_whole_loader(root):
    resized = _dataset(root, 32, uint8=True)
    assert not resized.return_uint8 and resized[0][0].dtype == torch.float32
    # One training set needs a resize (64 -> 35): the loader's batches must share one dtype.
    cfg = _cfg(root, 35)
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.DATASETS.TRAIN = ("tetrominoes_synth_train", "multi_dsprites_synth_train")
    mixed = make_data_loader(cfg, True, uint8_images=True)
    assert all(not d.return_uint8 for d in mixed.dataset.datasets)
    assert next(iter(mixed))[0].dtype == torch.float32
    cfg.DATASETS.TRAIN = ("tetrominoes_synth_train",)
    native = make_data_loader(cfg, True, uint8_images=True)
    assert next(iter(native))[0].dtype == torch.uint8
