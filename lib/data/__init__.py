"""Data: dataset registry, loaders, preparation of the built-in datasets."""

from lib.data.build import (
    DATASET_REGISTRY,
    InfiniteShuffleSampler,
    UnknownDatasetError,
    collate,
    dataset_provenance,
    make_data_loader,
    make_dataset,
)
from lib.data.prepare import (
    BUILTIN_DATASETS,
    convert_official,
    ensure_prepared,
    generate_dataset,
    load_meta,
)

__all__ = [
    "BUILTIN_DATASETS",
    "DATASET_REGISTRY",
    "InfiniteShuffleSampler",
    "UnknownDatasetError",
    "collate",
    "convert_official",
    "dataset_provenance",
    "ensure_prepared",
    "generate_dataset",
    "load_meta",
    "make_data_loader",
    "make_dataset",
]
