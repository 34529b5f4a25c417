"""Utilities: checkpoints, multi-process helpers and logging."""
