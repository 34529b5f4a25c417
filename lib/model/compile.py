"""Compile parts of a built IODINE model from outside (MODEL.COMPILE; same numbers up to
rounding).

"modules" compiles the decoder and the refinement network. Their compiled backward is one
opaque node that computes every input's gradient, so each inner ``autograd.grad`` for the
gradient inputs also computes the decoder's weight gradients (eager autograd skips them).
"step" (MODEL.COMPILE) keeps the decoder eager for that reason and compiles the model's
parameter-free per-step losses (whose backward yields only what the gradient inputs need) and
its refinement update (input assembly and refinement network, whose backward runs only in the
final ``loss.backward()``): the compiled functions are set on the instance, where they shadow
the methods ``IODINE._step_losses`` and ``IODINE._refine``. Measured: 3-6% faster than eager on
a 2-core Xeon (tools/README.md).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

COMPILE_MODES = ("none", "modules", "step")


def _keep_saved_buffers(fn):
    """``fn`` run with AOTAutograd's donated buffers off.

    The gradient-input ``autograd.grad`` retains the graph for the final backward, and a
    compiled backward that donates (frees) its saved buffers refuses ``retain_graph=True``.
    The setting is read when a graph is compiled: in the forward (first call, recompilations)
    and at the first backward, which is the forward's own gradient-input ``autograd.grad``.
    """

    @functools.wraps(fn)
    def call(*args, **kwargs):
        with torch._functorch.config.patch(donated_buffer=False):
            return fn(*args, **kwargs)

    return call


def compile_model(model: nn.Module, mode: str, backend: str = "inductor") -> nn.Module:
    """Run parts of each refinement step of an IODINE model under ``torch.compile``.

    Args:
        model: an ``IODINE`` (attributes ``decoder``, ``refinement``, methods
            ``_step_losses``, ``_refine``).
        mode: "none", "modules" or "step" (see the module docstring).
        backend: the ``torch.compile`` backend ("inductor"; "aot_eager" in tests).

    Returns:
        The model, compiled in place; ``model.compiled`` records the mode.

    Raises:
        ValueError: an unknown mode.
        RuntimeError: the model is already compiled.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be 'none', 'modules' or 'step', got {mode!r}")
    if getattr(model, "compiled", "none") != "none":
        raise RuntimeError(f"model already compiled ({model.compiled!r})")
    if mode == "modules":
        model.decoder = torch.compile(model.decoder, backend=backend)
        model.refinement = torch.compile(model.refinement, backend=backend)
    elif mode == "step":
        # dynamic=False: K and T change only between runs; a shape change recompiles.
        for name in ("_step_losses", "_refine"):
            compiled = torch.compile(getattr(model, name), backend=backend, dynamic=False)
            setattr(model, name, compiled)
    if mode != "none":
        model.forward = _keep_saved_buffers(model.forward)
    model.compiled = mode
    return model
