"""Measuring where IODINE's time, memory and FLOPs go (used by ``tools/benchmark.py``).

A training step is split into disjoint phases:

* ``decoder``: the decoder's forward passes (T+1 per step),
* ``grad_inputs``: the ``torch.autograd.grad`` calls inside the model's forward (T per step,
  each a backward pass through one step's decoder and likelihood),
* ``refinement``: the refinement network's forward passes (T per step),
* ``backward``: the final ``loss.backward()``,
* ``optimizer``: zero_grad, gradient clipping and the Adam step,

and everything else (likelihood, KL, refinement input assembly, Python overhead) is the rest of
the step. The model marks its own phases: ``IODINE`` wraps them in
``torch.profiler.record_function("iodine.<phase>")`` ranges (visible in any torch.profiler
trace) and, when its ``phase_hook`` attribute is set, in ``phase_hook(<phase>)``.
``PhaseTimer`` times the phases (synchronising CUDA at every boundary, so only for a separate,
instrumented step), ``instrument`` sets the model's ``phase_hook`` to the timer for a while,
and ``count_flops`` counts FLOPs with ``torch.utils.flop_counter.FlopCounterMode``, attributed
to the same phases. The caller marks ``backward`` and ``optimizer`` with ``timer.phase``.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import resource
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# Phases in report order; "optimizer" is part of the step's "other" time in the shares.
PHASES = ("decoder", "grad_inputs", "refinement", "backward", "optimizer")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op off CUDA).

    Args:
        device: the device the model runs on.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PhaseTimer:
    """Wall-clock time and call count of named phases, which never overlap.

    A phase entered while another is active is not timed on its own: its time stays with the
    outer phase, so the phase times of a step add up to at most the step time.

    Args:
        device: the model's device; CUDA is synchronised at every phase boundary.
        clock: seconds as a float (``time.perf_counter``; tests pass a fake clock).
    """

    def __init__(
        self, device: torch.device, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.device = device
        self.clock = clock
        self.times: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.active: str | None = None
        self._depth = 0
        self._start = 0.0

    def enter(self, name: str) -> None:
        """Start phase ``name`` (or nest inside the active phase).

        Args:
            name: phase name.
        """
        self._depth += 1
        if self._depth > 1:
            return
        synchronize(self.device)
        self.active = name
        self._start = self.clock()

    def exit(self) -> None:
        """End the innermost entered phase; the outermost one adds its time.

        Raises:
            RuntimeError: no phase is active.
        """
        if self._depth == 0:
            raise RuntimeError("PhaseTimer.exit() without a matching enter()")
        self._depth -= 1
        if self._depth > 0:
            return
        synchronize(self.device)
        self.times[self.active] += self.clock() - self._start
        self.calls[self.active] += 1
        self.active = None

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Context manager form of ``enter`` / ``exit`` (the model's ``phase_hook`` form).

        Args:
            name: phase name.
        """
        self.enter(name)
        try:
            yield
        finally:
            self.exit()

    def reset(self) -> None:
        """Forget all recorded times and calls."""
        self.times.clear()
        self.calls.clear()


@contextlib.contextmanager
def instrument(model: nn.Module, timer: PhaseTimer) -> Iterator[PhaseTimer]:
    """Time the decoder, refinement network and gradient inputs of an IODINE model.

    Sets the model's ``phase_hook`` to ``timer.phase`` and restores the previous hook on exit
    (also when the body raises); nothing else is changed. ``loss.backward()`` and the
    optimiser are timed by the caller.

    Args:
        model: an ``IODINE`` model (not DDP-wrapped: pass ``ddp.module``).
        timer: receives the phase times.

    Yields:
        ``timer``.

    Raises:
        TypeError: the model has no ``phase_hook`` attribute.
    """
    if not hasattr(model, "phase_hook"):
        raise TypeError(
            f"instrument needs a model with a phase_hook attribute (lib.model.iodine.IODINE, "
            f"not wrapped), got {type(model).__name__}"
        )
    previous = model.phase_hook
    model.phase_hook = timer.phase
    try:
        yield timer
    finally:
        model.phase_hook = previous


class _PhaseParents:
    """Stands in for FlopCounterMode's module tracker: attributes each counted op to
    ``Global`` and to the timer's active phase (the module tracker cannot follow this model:
    its forward runs ``autograd.grad`` and calls modules under ``no_grad`` with leaf views)."""

    def __init__(self, timer: PhaseTimer) -> None:
        self.timer = timer

    @property
    def parents(self) -> set[str]:
        return {"Global", self.timer.active} if self.timer.active else {"Global"}

    def __enter__(self) -> _PhaseParents:
        return self

    def __exit__(self, *args: Any) -> None:
        return None


def count_flops(
    fn: Callable[[PhaseTimer], None], model: nn.Module, device: torch.device
) -> dict[str, Any]:
    """Count the FLOPs of ``fn`` with ``FlopCounterMode``, per phase where possible.

    Args:
        fn: runs the work once; it gets a ``PhaseTimer`` to mark the phases it times itself
            (``backward``); the model's own phases are instrumented here.
        model: the IODINE model ``fn`` runs.
        device: the model's device.

    Returns:
        ``{"total": int, "phases": {phase: int, ..., "other": int} or None}``. The counter
        counts matrix products and convolutions (forward and backward); element-wise work
        (activations, likelihood, Adam) counts zero. ``phases`` is None where this torch's
        FlopCounterMode has no module tracker to replace.
    """
    timer = PhaseTimer(device)
    counter = FlopCounterMode(display=False)
    by_phase = hasattr(counter, "mod_tracker")
    if by_phase:
        counter.mod_tracker = _PhaseParents(timer)
    with instrument(model, timer), counter:
        fn(timer)
    counts = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    total = int(counts.get("Global", 0))
    if not by_phase:
        return {"total": total, "phases": None}
    phases = {name: int(counts.get(name, 0)) for name in PHASES}
    phases["other"] = total - sum(phases.values())
    return {"total": total, "phases": phases}


# ----------------------------------------------------------------------------------------------
def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            match = re.search(rf"^{field}:\s+(\d+)\s+kB", f.read(), re.MULTILINE)
    except OSError:  # no /proc: the caller falls back to getrusage or reports unknown
        return None
    return int(match.group(1)) if match else None


def reset_peak_memory(device: torch.device) -> bool:
    """Restart the peak-memory measurement.

    On CUDA the allocator's peak statistics; on the CPU the process's resident-set high-water
    mark (Linux: writing 5 to /proc/self/clear_refs resets VmHWM).

    Args:
        device: the model's device.

    Returns:
        Whether the peak was reset (False: the CPU peak is the lifetime ru_maxrss).
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:  # no /proc or not allowed: the peak stays the lifetime one, as returned
        return False
    return _proc_status_kib("VmHWM") is not None


def current_memory(device: torch.device) -> int:
    """Bytes in use now: CUDA tensors allocated, or the process's resident set on the CPU.

    Args:
        device: the model's device.

    Returns:
        Bytes (0 if unknown).
    """
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    rss = _proc_status_kib("VmRSS")
    return rss * 1024 if rss is not None else 0


def peak_memory(device: torch.device) -> int:
    """Peak bytes since the last ``reset_peak_memory``.

    Args:
        device: the model's device.

    Returns:
        CUDA: ``torch.cuda.max_memory_allocated``. CPU: VmHWM, else
        ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (the lifetime peak).
    """
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    hwm = _proc_status_kib("VmHWM")
    if hwm is not None:
        return hwm * 1024
    return lifetime_max_rss()


def lifetime_max_rss() -> int:
    """The process's peak resident set since it started, in bytes (``ru_maxrss``).

    Returns:
        Bytes.
    """
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss) if platform.system() == "Darwin" else int(maxrss) * 1024


def device_name(device: torch.device) -> str:
    """A readable name of the device: the GPU's name, or the CPU model.

    Args:
        device: the model's device.

    Returns:
        The name.
    """
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass  # no /proc (macOS, Windows): the platform module's name below is the answer
    return platform.processor() or platform.machine() or "unknown CPU"


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages of the machine, or None where unknown.

    Returns:
        Three floats or None.
    """
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None
