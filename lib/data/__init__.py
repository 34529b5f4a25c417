"""Data, reading side: the dataset registry, loaders and the prepared-folder format.

Reading only: the built-in folders are written by ``lib.prepare`` (``tools/prepare_data.py``),
which this package never imports.
"""

from lib.data.build import (
    DATASET_REGISTRY,
    InfiniteShuffleSampler,
    UnknownDatasetError,
    collate,
    dataset_provenance,
    make_data_loader,
    make_dataset,
    register_dataset,
)

__all__ = [
    "DATASET_REGISTRY",
    "InfiniteShuffleSampler",
    "UnknownDatasetError",
    "collate",
    "dataset_provenance",
    "make_data_loader",
    "make_dataset",
    "register_dataset",
]
