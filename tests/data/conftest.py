"""Data-test helpers: a config for a dataset root."""

from __future__ import annotations

from lib.config import get_cfg


def data_cfg(root: str, **overrides):
    """Default config with ``DATASETS.ROOT = root``, no workers, and ``KEY=value`` overrides
    (dots as ``__``: ``INPUT__IMAGE_SIZE=35``)."""
    cfg = get_cfg()
    cfg.DATASETS.ROOT = str(root)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.MODEL.DEVICE = "cpu"
    for key, value in overrides.items():
        node = cfg
        *path, last = key.split("__")
        for part in path:
            node = node[part]
        node[last] = value
    return cfg


def to_model_input(image, mask, size, crop=None, resize="bilinear", uint8=False):
    """One stored example through ``ItemFormat`` with no config: the given size and resize."""
    from lib.data.datasets.base import ItemFormat

    return ItemFormat(size, resize, None, False, 0)(image, mask, crop, uint8)
