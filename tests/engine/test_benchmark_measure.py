"""lib.engine.benchmark: the Trainer's own step is timed, bad arguments, no hook left behind."""

import pytest
import torch

from lib.engine import benchmark
from lib.errors import ConfigError
from lib.model import build_model
from tests.engine.engine_helpers import tiny_cfg


def test_training_steps_are_the_trainers_run_step(monkeypatch):
    # warm-up + timed + profiled steps, each one Trainer.run_step; the FLOP count is not one.
    calls = []
    run_step = benchmark.Trainer.run_step
    monkeypatch.setattr(benchmark.Trainer, "run_step", lambda t: calls.append(1) or run_step(t))
    cfg = tiny_cfg(**{"SOLVER.IMS_PER_BATCH": 2})
    r = benchmark.run_benchmark(cfg, steps=2, warmup=1, mode="train", profile=True)
    assert len(calls) == 1 + 2 + 2  # profile_steps 0: min(steps, 3)
    assert r["setup"]["profile_steps"] == 2 and "infer" not in r
    assert r["train"]["images_per_s"] == pytest.approx(2 / r["train"]["step_time_s"]["median"])


@pytest.mark.parametrize(
    ("kwargs", "got"),
    [
        ({"steps": 0}, "got 0, 2, 0, 4 and 'both'"),
        ({"warmup": -1}, "got 10, -1, 0, 4 and 'both'"),
        ({"profile_steps": -1}, "got 10, 2, -1, 4 and 'both'"),
        ({"mode": "both ways"}, "got 10, 2, 0, 4 and 'both ways'"),
        ({"batch_size": -2}, "got 10, 2, 0, -2 and 'both'"),
    ],
)
def test_bad_arguments_raise_config_errors(kwargs, got):
    # tiny_cfg's SOLVER.IMS_PER_BATCH is 4; the message names every constraint and value.
    with pytest.raises(ConfigError, match="need steps >= 1, warmup >= 0") as info:
        benchmark.run_benchmark(tiny_cfg(), **kwargs)
    assert str(info.value).endswith(got)


def test_flop_count_leaves_no_global_hook():
    # FlopCounterMode's module tracker registers global module hooks; none stays.
    from torch.nn.modules import module

    before = (len(module._global_forward_pre_hooks), len(module._global_forward_hooks))
    images = torch.rand(1, 3, 16, 16)
    train, infer = (benchmark._count_flops(tiny_cfg(), m, images) for m in ("train", "infer"))
    assert train > infer > 0  # the final backward on top
    after = (len(module._global_forward_pre_hooks), len(module._global_forward_hooks))
    assert after == before


def test_part_ranges_leave_nothing_behind():
    # The ranges wrap the instance's methods from outside, for the profile only, restored also
    # on an error.
    model = build_model(tiny_cfg())
    images = torch.rand(1, 3, 16, 16)
    with pytest.raises(RuntimeError, match="stop"), benchmark._part_ranges(model):
        assert {"decode", "_refine"} <= set(model.__dict__)
        raise RuntimeError("stop")
    with torch.profiler.profile() as prof, benchmark._part_ranges(model):
        model(images)
    names = {e.key for e in prof.key_averages()}
    assert {"iodine.decoder", "iodine.refinement"} <= names
    assert not {"decode", "_refine"} & set(model.__dict__)


@pytest.mark.slow  # one aot_eager compilation
def test_part_ranges_time_the_compiled_refinement_too():
    from lib.model.compile import compile_model

    model = compile_model(build_model(tiny_cfg()), "step", backend="aot_eager")
    compiled = model.__dict__["_refine"]
    images = torch.rand(1, 3, 16, 16)
    model(images)  # compiles before the ranges exist, as the benchmark's warm-up does
    with torch.profiler.profile() as prof, benchmark._part_ranges(model):
        model(images)
    calls = {e.key: e.count for e in prof.key_averages()}
    t = model.num_iters
    assert calls["iodine.refinement"] == t and calls["iodine.decoder"] == t + 1
    assert model.__dict__["_refine"] is compiled  # restored
