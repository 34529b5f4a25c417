"""Training and evaluation engine: ``do_train`` and ``do_evaluate``."""

from lib.engine.inference import do_evaluate
from lib.engine.trainer import NonFiniteError, do_train

__all__ = ["NonFiniteError", "do_evaluate", "do_train"]
