"""Dataset classes: built-in prepared datasets and ``folder:<path>`` image folders."""

from lib.data.datasets.base import to_model_input
from lib.data.datasets.folder import FolderDataset
from lib.data.datasets.prepared import PreparedDataset

__all__ = ["FolderDataset", "PreparedDataset", "to_model_input"]
