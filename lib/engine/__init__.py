"""Training and evaluation engine.

* ``trainer``: ``train_step`` (one optimiser step), ``Trainer`` (the loop, ``run_step``) and
  ``do_train`` (builds a Trainer with train_net's hooks),
* ``hooks``: the Trainer's hooks (scalar logs, images, evaluation, checkpoints, progress),
* ``inference``: ``do_evaluate`` (metrics, shared by training and ``tools/test_net.py``),
* ``checkpoint``: ``Checkpointer``, RNG states, strict model-state loading,
* ``solver``: optimiser and learning-rate schedule,
* ``summaries``: TensorBoard pictures,
* ``setup``: device, seeds, precision, weights, DDP wrapping (the tools' parser and runner are
  ``lib.cli``),
* ``benchmark``: speed, memory, FLOPs and a profile of the training and inference steps.
"""

from lib.engine.inference import do_evaluate
from lib.engine.trainer import NonFiniteError, do_train, train_step

__all__ = ["NonFiniteError", "do_evaluate", "do_train", "train_step"]
