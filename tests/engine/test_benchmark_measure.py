"""lib.engine.benchmark: time shares against known phase durations, meta vs real FLOP counts."""

import contextlib
import json
import time

import pytest
import torch

from lib.analysis.kernel_profile import trace_events
from lib.engine import benchmark
from lib.engine.solver import make_optimizer
from lib.engine.trainer import train_step
from lib.model import build_model
from tests.engine.engine_helpers import tiny_cfg

CPU = torch.device("cpu")


@pytest.mark.parametrize("mode", ["train", "infer"])
def test_meta_flop_count_equals_a_real_one(mode):
    cfg = tiny_cfg(**{"MODEL.DECODER.FACTORIZED_FIRST_LAYER": True})
    meta = benchmark._count_mode_flops(cfg, mode, 2, 16, CPU, meta=True)
    real = benchmark._count_mode_flops(cfg, mode, 2, 16, CPU, meta=False)
    assert meta["device"] == "meta" and real["device"] == "cpu"
    assert meta["total"] == real["total"] > 0 and meta["phases"] == real["phases"]


def test_shares_match_known_phase_durations():
    # A step whose phases sleep for known times: the shares must be those times' fractions.
    durations = {"decoder": 0.03, "backward": 0.02, "optimizer": 0.01, None: 0.02}
    total = sum(durations.values())
    model = build_model(tiny_cfg())

    def step(timer):
        for name, seconds in durations.items():
            phase = timer.phase(name) if timer is not None and name else contextlib.nullcontext()
            with phase:
                time.sleep(seconds)

    def run(n, timer):
        times = []
        for _ in range(n):
            start = time.perf_counter()
            step(timer)
            times.append(time.perf_counter() - start)
        return times

    r = benchmark._measure_mode("train", run, model, CPU, 2, 1, 0, 2, lambda _: None)
    expected = {
        "decoder": 0.03 / total,
        "grad_inputs": 0.0,
        "refinement": 0.0,
        "backward": 0.02 / total,
        "other": (0.01 + 0.02) / total,  # the optimiser and the unmarked time
    }
    for name, share in expected.items():
        assert r["shares"][name] == pytest.approx(share, abs=0.04), (name, r["shares"])
    assert r["optimizer_share"] == pytest.approx(0.01 / total, abs=0.04)
    assert r["part_calls_per_step"]["decoder"] == 1
    assert r["profiled_step_time_s"] == pytest.approx(total, rel=0.2)


def test_profile_mode_counts_the_same_operators_as_a_profiler_run_by_hand(tmp_path):
    # benchmark's --profile on the CPU: its per-step operator count for the training steps
    # equals what torch.profiler counts (outermost operators) on the same steps run by hand
    # with the same model and batch, and the shares cover the wall time.
    cfg = tiny_cfg(**{"SOLVER.IMS_PER_BATCH": 2})
    result = benchmark.run_benchmark(
        cfg, steps=1, warmup=1, mode="train", profile_steps=2, profile=True
    )
    prof = result["train"]["kernel_profile"]
    assert prof["iterations"] == 2
    assert sum(prof["shares"].values()) == pytest.approx(1.0)
    assert prof["peak"]["fraction"] is None and "no peak known" in prof["peak"]["peak_source"]
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer = make_optimizer(cfg, model)
    params = [p for p in model.parameters() if p.requires_grad]
    images = torch.rand(2, 3, cfg.INPUT.IMAGE_SIZE, cfg.INPUT.IMAGE_SIZE)
    train_step(model, optimizer, [images], params, float("inf"))  # Adam state built
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as p:
        train_step(model, optimizer, [images], params, float("inf"), defer_check=True)
    trace = tmp_path / "trace.json"
    p.export_chrome_trace(str(trace))
    _, ops = trace_events(json.loads(trace.read_text()), "cpu")
    # The same model code per step: within a few operators (the benchmark's clipping limit
    # differs from inf, and its step goes through the Trainer).
    assert abs(prof["kernels_per_step"] - ops) <= 0.05 * ops
