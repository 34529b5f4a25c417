"""Preparation, the writing side: make the built-in dataset folders that ``lib.data`` reads.

``prepare_missing`` (what the tools call before building datasets), ``generate_dataset``
(procedural generators in ``generators/``), ``convert_official`` (the official TFRecords) and
the atomic folder writer ``DatasetWriter`` both use.
"""

from lib.prepare.generation import derived_test_seed, generate_dataset
from lib.prepare.missing import MissingDataError, check_official, prepare_missing
from lib.prepare.official import convert_official
from lib.prepare.writer import DatasetWriter

__all__ = [
    "DatasetWriter",
    "MissingDataError",
    "check_official",
    "convert_official",
    "derived_test_seed",
    "generate_dataset",
    "prepare_missing",
]
