"""Segmentation metrics: the adjusted Rand index and its foreground variant, segmentation
covering, Hungarian mIoU, mean best overlap, object-count accuracy and foreground MSE."""

from lib.evaluation.ari import adjusted_rand_index, mean_ari
from lib.evaluation.segmentation import (
    contingency_table,
    foreground_mse,
    hungarian_miou,
    mean_best_overlap,
    mean_segmentation_covering,
    object_count_accuracy,
    segmentation_covering,
    segmentation_scores,
)

__all__ = [
    "adjusted_rand_index",
    "contingency_table",
    "foreground_mse",
    "hungarian_miou",
    "mean_ari",
    "mean_best_overlap",
    "mean_segmentation_covering",
    "object_count_accuracy",
    "segmentation_covering",
    "segmentation_scores",
]
