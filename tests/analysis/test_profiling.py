"""lib/analysis/profiling.py and the model's phase marks: timer arithmetic with a fake clock,
phase counts against the model's structure, FLOPs against separate counts of each network."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lib.analysis import profiling

from .conftest import T

CPU = torch.device("cpu")
B, S = 2, 16


class FakeClock:
    """Returns the given times one after another."""

    def __init__(self, *times: float) -> None:
        self.times = list(times)

    def __call__(self) -> float:
        return self.times.pop(0)


def test_phase_timer_adds_outer_phases_only():
    clock = FakeClock(1.0, 3.5, 4.0, 4.25, 10.0, 10.5)
    timer = profiling.PhaseTimer(CPU, clock=clock)
    with timer.phase("a"):
        assert timer.active == "a"
        with timer.phase("b"):  # nested: its time stays with "a", no clock read
            assert timer.active == "a"
    with timer.phase("c"):
        pass
    with pytest.raises(KeyError), timer.phase("a"):
        raise KeyError("the phase still ends")
    assert dict(timer.times) == {"a": (3.5 - 1.0) + (10.5 - 10.0), "c": 4.25 - 4.0}
    assert dict(timer.calls) == {"a": 2, "c": 1}
    assert timer.active is None and clock.times == []
    with pytest.raises(RuntimeError, match="without a matching enter"):
        timer.exit()
    timer.reset()
    assert not timer.times and not timer.calls


def _expected_phase_order(num_iters: int) -> list[str]:
    # Step t: decode, then (t < T) the gradient inputs and the refinement; T+1 decodes in all.
    order = []
    for t in range(num_iters + 1):
        order.append("decoder")
        if t < num_iters:
            order += ["grad_inputs", "refinement"]
    return order


@pytest.mark.parametrize("training", [False, True])
def test_instrument_times_each_phase_and_restores_the_hook(tiny_model, training):
    model = tiny_model.train(training)
    timer = profiling.PhaseTimer(CPU)
    # The networks' forwards run inside the phases named after them.
    seen = []
    handles = [
        module.register_forward_pre_hook(lambda *_, n=name: seen.append((n, timer.active)))
        for name, module in (("decoder", model.decoder), ("refinement", model.refinement))
    ]
    with profiling.instrument(model, timer) as got:
        assert got is timer and model.phase_hook == timer.phase
        out = model(torch.rand(B, 3, S, S))
    if training:
        out["loss"].backward()  # outside the model: not one of its phases
    for handle in handles:
        handle.remove()
    assert dict(timer.calls) == {"decoder": T + 1, "grad_inputs": T, "refinement": T}
    assert all(t >= 0 for t in timer.times.values())
    assert seen == [(n, n) for n in _expected_phase_order(T) if n != "grad_inputs"]
    assert model.phase_hook is None and timer.active is None


def test_phase_hook_order_and_restore_after_an_error(tiny_model):
    names = []

    def hook(name):
        names.append(name)
        return torch.no_grad() if name == "never" else torch.enable_grad()

    tiny_model.phase_hook = hook
    timer = profiling.PhaseTimer(CPU)
    with pytest.raises(ValueError, match="shape"), profiling.instrument(tiny_model, timer):
        tiny_model(torch.rand(B, 1, S, S))  # a bad input: the previous hook comes back
    assert tiny_model.phase_hook is hook
    with torch.no_grad():
        tiny_model(torch.rand(B, 3, S, S), num_iters=3)
    assert names == _expected_phase_order(3)


def test_instrument_refuses_a_model_without_phase_hook():
    with pytest.raises(TypeError, match="phase_hook.*Sequential"):
        with profiling.instrument(nn.Sequential(nn.Linear(2, 2)), profiling.PhaseTimer(CPU)):
            pass


def test_profiler_ranges_name_the_phases(tiny_model):
    # The autograd profiler starts in milliseconds; torch.profiler.profile takes seconds here.
    with torch.autograd.profiler.profile() as prof, torch.no_grad():
        tiny_model(torch.rand(B, 3, S, S))
    counts = {}
    for event in prof.function_events:
        if event.name.startswith("iodine."):
            counts[event.name] = counts.get(event.name, 0) + 1
    assert counts == {"iodine.decoder": T + 1, "iodine.grad_inputs": T, "iodine.refinement": T}


def _flops(module: nn.Module, args: tuple) -> int:
    # Fresh copies of the inputs: the counter's module tracker cannot follow the views of
    # leaf tensors that the captured arguments are.
    args = torch.utils._pytree.tree_map(
        lambda a: a.detach().clone() if torch.is_tensor(a) else a, args
    )
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(*args)
    return counter.get_total_flops()


def test_count_flops_by_phase_matches_separate_counts(tiny_model):
    model = tiny_model
    images = torch.rand(B, 3, S, S)
    # Capture one call's inputs of each network, then count each network on its own.
    captured = {}
    handles = [
        module.register_forward_pre_hook(lambda _, args, n=name: captured.setdefault(n, args))
        for name, module in (("decoder", model.decoder), ("refinement", model.refinement))
    ]
    with torch.no_grad():
        model(images)
    for handle in handles:
        handle.remove()
    decoder = _flops(model.decoder, captured["decoder"])
    refinement = _flops(model.refinement, captured["refinement"])

    def step(timer):
        model.train()
        out = model(images)
        with timer.phase("backward"):
            out["loss"].backward()

    result = profiling.count_flops(step, model, CPU)
    phases = result["phases"]
    assert phases["decoder"] == (T + 1) * decoder > 0
    assert phases["refinement"] == T * refinement > 0
    # Each gradient-input call is one backward through a decoder forward, for the inputs only
    # (autograd.grad asks for no weight gradient): a conv's input gradient costs its forward,
    # and the first layer's broadcast input needs less than all of it.
    assert 0.5 * T * decoder <= phases["grad_inputs"] <= T * decoder
    assert phases["backward"] > phases["decoder"]
    assert phases["optimizer"] == 0
    assert result["total"] == sum(phases.values()) and phases["other"] >= 0
    assert model.phase_hook is None


def test_peak_memory_sees_a_large_allocation():
    reset = profiling.reset_peak_memory(CPU)
    before = profiling.current_memory(CPU)
    block = np.ones(64 * 2**20 // 8)  # 64 MiB of float64, every page touched
    assert profiling.current_memory(CPU) >= before + 48 * 2**20
    del block
    peak = profiling.peak_memory(CPU)
    assert peak >= before + 48 * 2**20
    if reset:  # the high-water mark restarted: it cannot exceed the lifetime peak
        assert peak <= profiling.lifetime_max_rss()
