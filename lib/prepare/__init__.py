"""Preparation, writing side: make the built-in dataset folders that ``lib.data`` reads.

- ``prepare_missing(cfg, names)``: what the tools call before building datasets; stops at a
  paper dataset whose official data is not prepared (``check_official``), and generates a
  missing stand-in (``*_synth``, ``sprites``) under a file lock every rank may wait on.
- ``generate_dataset``: procedural generation on every core, resumable (``generation.py``).
- ``convert_official``: the official ``multi_object_datasets`` TFRecords (``official.py``,
  reader in ``tfrecords.py``).
- ``DatasetWriter``: the atomic folder writer both use (``writer.py``); generators in
  ``generators/``.
"""

from lib.prepare.generation import derived_test_seed, generate_command, generate_dataset
from lib.prepare.missing import MissingDataError, check_official, prepare_missing
from lib.prepare.official import convert_official
from lib.prepare.writer import DatasetWriter

__all__ = [
    "DatasetWriter",
    "MissingDataError",
    "check_official",
    "convert_official",
    "derived_test_seed",
    "generate_command",
    "generate_dataset",
    "prepare_missing",
]
