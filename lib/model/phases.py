"""Profiling marks around the three phases of a refinement step.

``IODINE`` wraps each decoder call ("decoder"), gradient-input ``autograd.grad`` call
("grad_inputs") and refinement-network call ("refinement") in ``phase(model, name)``: a
``torch.profiler.record_function("iodine.<phase>")`` range while a torch profiler runs, and
the model's ``phase_hook(name)`` context when one is set (``lib.analysis.profiling.instrument``
sets it). The marks change no number.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def phase(model: nn.Module, name: str) -> Iterator[None]:
    """Mark one phase of ``model``'s forward.

    Args:
        model: a module with a ``phase_hook`` attribute (None, or callable(name) returning a
            context manager).
        name: "decoder", "grad_inputs" or "refinement".
    """
    if torch.compiler.is_compiling():
        # Inside a compiled step the whole compiled call is the phase.
        yield
        return
    # The range costs several microseconds even with no profiler; the check costs 0.1.
    profiling = torch.autograd._profiler_enabled()
    mark = torch.profiler.record_function if profiling else contextlib.nullcontext
    with mark(f"iodine.{name}"):
        if model.phase_hook is None:
            yield
        else:
            with model.phase_hook(name):
                yield
