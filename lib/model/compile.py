"""Compile strategies of an IODINE model (speed switches: same numbers up to rounding).

"modules" compiles the decoder and the refinement network. Their compiled backward is one
opaque node that computes every input's gradient, so each inner ``autograd.grad`` for the
gradient inputs also computes the decoder's weight gradients (eager autograd skips them).
"step" keeps the decoder eager for that reason and compiles the parameter-free likelihood and
losses of a step (whose backward yields only what the gradient inputs need) and the
refinement-input assembly with the refinement network (whose backward runs only in the final
``loss.backward()``). The model calls its per-step functions through ``_step_losses_fn`` and
``_refine_fn``, which ``compile_model`` replaces.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

COMPILE_MODES = ("none", "modules", "step")


def keep_saved_buffers(compiled: str) -> contextlib.AbstractContextManager:
    """AOTAutograd's donated buffers off while a compiled model computes gradient inputs.

    The gradient-input ``autograd.grad`` retains the graph for the final backward, and a
    compiled backward that donates (frees) its saved buffers refuses ``retain_graph=True``.
    The setting is read when a graph is compiled: on the forward's first call and every
    recompilation, and on the backward's first call (it is compiled lazily).

    Args:
        compiled: the model's ``compiled`` mode; "none" gives a no-op context.

    Returns:
        A context manager.
    """
    if compiled == "none":
        return contextlib.nullcontext()
    return torch._functorch.config.patch(donated_buffer=False)


def _keep_buffers(fn):
    """``fn`` called with donated buffers off (see ``keep_saved_buffers``)."""

    def call(*args):
        with keep_saved_buffers("step"):
            return fn(*args)

    return call


def compile_model(model: nn.Module, mode: str, backend: str = "inductor") -> nn.Module:
    """Run parts of each refinement step of an IODINE model under ``torch.compile``.

    Args:
        model: an ``IODINE`` (attributes ``decoder``, ``refinement``, ``_step_losses``,
            ``_refine``, ``compiled``).
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
    if model.compiled != "none":
        raise RuntimeError(f"model already compiled ({model.compiled!r})")
    if mode == "modules":
        model.decoder = torch.compile(model.decoder, backend=backend)
        model.refinement = torch.compile(model.refinement, backend=backend)
    elif mode == "step":
        # dynamic=False: K and T change only between runs; a shape change recompiles.
        losses = torch.compile(model._step_losses, backend=backend, dynamic=False)
        refine = torch.compile(model._refine, backend=backend, dynamic=False)
        model._step_losses_fn, model._refine_fn = _keep_buffers(losses), _keep_buffers(refine)
    model.compiled = mode
    return model
