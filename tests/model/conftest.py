"""Tiny model configurations for the model tests."""

import pytest
import torch

from lib.config import get_cfg


def tiny_cfg(**overrides):
    """A small IODINE config (16x16 images, K=3, T=2) that runs in milliseconds on the CPU."""
    cfg = get_cfg()
    cfg.MODEL.IODINE.NUM_SLOTS = 3
    cfg.MODEL.IODINE.NUM_ITERS = 2
    cfg.MODEL.IODINE.LATENT_DIM = 4
    cfg.MODEL.REFINEMENT.CONV_CHANNELS = (8, 8)
    cfg.MODEL.REFINEMENT.MLP_SIZES = (16,)
    cfg.MODEL.REFINEMENT.LSTM_SIZE = 16
    cfg.MODEL.DECODER.CONV_CHANNELS = (8, 8)
    cfg.INPUT.IMAGE_SIZE = 16
    for key, value in overrides.items():
        node = cfg
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    return cfg


@pytest.fixture
def images():
    gen = torch.Generator().manual_seed(0)
    return torch.rand(4, 3, 16, 16, generator=gen)


def clevr_factor_batch(seed: int, b: int = 2, hw: int = 8, n_ent: int = 4):
    """Random images, label maps and CLEVR-mapping factors (all entities visible)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 3, hw, hw, generator=g)
    labels = torch.randint(0, n_ent, (b, hw, hw), generator=g)
    factors = {
        "color": torch.randint(0, 9, (b, n_ent, 1), generator=g).float(),
        "shape": torch.randint(0, 4, (b, n_ent, 1), generator=g).float(),
        "size": torch.randint(0, 3, (b, n_ent, 1), generator=g).float(),
        "position": torch.rand(b, n_ent, 3, generator=g),
        "visibility": torch.ones(b, n_ent),
    }
    return images, labels, factors
