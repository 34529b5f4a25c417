"""Segmentation metrics: ARI and foreground ARI, segmentation covering, mean best overlap,
Hungarian mIoU (ClevrTex's and OCLF's), object-count accuracy and foreground MSE."""

from lib.evaluation.ari import adjusted_rand_index, contingency_table, mean_ari
from lib.evaluation.segmentation import SCORE_KEYS, foreground_mse, segmentation_scores

__all__ = [
    "SCORE_KEYS",
    "adjusted_rand_index",
    "contingency_table",
    "foreground_mse",
    "mean_ari",
    "segmentation_scores",
]
