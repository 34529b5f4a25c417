"""Segmentation metrics: the adjusted Rand index and its foreground variant."""

from lib.evaluation.ari import adjusted_rand_index, mean_ari

__all__ = ["adjusted_rand_index", "mean_ari"]
