"""Preparation, writing side: make the built-in dataset folders that ``lib.data`` reads.

- ``prepare_missing(cfg, names)``: what the tools call before building datasets; generates a
  missing built-in folder that has a generator, under a file lock every rank may wait on.
- ``generate_dataset``: procedural generation on every core, resumable (``generation.py``).
- ``convert_official``: the official ``multi_object_datasets`` TFRecords (``official.py``,
  reader in ``tfrecords.py``).
- ``DatasetWriter``: the atomic folder writer both use (``writer.py``); generators in
  ``generators/``.
"""

from lib.prepare.generation import derived_test_seed, generate_command, generate_dataset
from lib.prepare.missing import prepare_missing
from lib.prepare.official import convert_official
from lib.prepare.writer import DatasetWriter

__all__ = [
    "DatasetWriter",
    "convert_official",
    "derived_test_seed",
    "generate_command",
    "generate_dataset",
    "prepare_missing",
]
