"""The IODINE model: ``build_model(cfg)`` and its parts."""

from lib.model.build import build_model, trainable_parameter_counts
from lib.model.iodine import IODINE

__all__ = ["IODINE", "build_model", "trainable_parameter_counts"]
