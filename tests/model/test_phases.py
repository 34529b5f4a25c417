"""lib.model.phases: the profiling marks around a step's phases."""

import contextlib

import torch

from lib.model.phases import phase


class _Model:
    def __init__(self, hook=None):
        self.phase_hook = hook


def test_phase_enters_the_hook_and_runs_without_one():
    seen = []

    @contextlib.contextmanager
    def hook(name):
        seen.append(("enter", name))
        yield
        seen.append(("exit", name))

    with phase(_Model(hook), "decoder"):
        seen.append(("body", None))
    assert seen == [("enter", "decoder"), ("body", None), ("exit", "decoder")]
    with phase(_Model(), "refinement"):
        pass


def test_phase_is_a_profiler_range_while_a_profiler_runs():
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with phase(_Model(), "grad_inputs"):
            torch.ones(2).sum()
    assert "iodine.grad_inputs" in {e.key for e in prof.key_averages()}
