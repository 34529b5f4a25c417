"""Training and evaluation engine.

* ``trainer``: ``train_step`` (one optimiser step) and ``do_train`` (the loop),
* ``inference``: ``do_evaluate`` (metrics, shared by training and ``tools/test_net.py``),
* ``checkpoint``: ``Checkpointer``, RNG states, strict model-state loading,
* ``solver``: optimiser and learning-rate schedule,
* ``summaries``: TensorBoard pictures,
* ``launch``: the tools' shared layer (command line, config, processes, weights, datasets),
* ``benchmark``: speed, memory and FLOPs of the training and inference steps.
"""

from lib.engine.inference import do_evaluate
from lib.engine.trainer import NonFiniteError, do_train, train_step

__all__ = ["NonFiniteError", "do_evaluate", "do_train", "train_step"]
