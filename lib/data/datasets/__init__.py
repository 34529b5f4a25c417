"""Dataset classes: built-in prepared datasets, ``folder:<path>`` image folders, and the
external formats ``hdf5:<file>`` and ``clevrtex:<dir>`` (``external.make_external_dataset``)."""

from lib.data.datasets.base import ItemFormat
from lib.data.datasets.clevrtex import ClevrTexDataset
from lib.data.datasets.external import EXTERNAL_PREFIXES, make_external_dataset
from lib.data.datasets.folder import FolderDataset
from lib.data.datasets.hdf5 import Hdf5Dataset
from lib.data.datasets.prepared import PreparedDataset

__all__ = [
    "EXTERNAL_PREFIXES",
    "ItemFormat",
    "ClevrTexDataset",
    "FolderDataset",
    "Hdf5Dataset",
    "PreparedDataset",
    "make_external_dataset",
]
