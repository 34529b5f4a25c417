"""lib.analysis.kernel_profile: the busy-time split against hand-made timelines, the peak
table, and a real CPU profile of a known workload."""

from __future__ import annotations

import json

import pytest
import torch

from lib.analysis.kernel_profile import (
    achieved_fraction,
    classify,
    merge_intervals,
    outermost,
    peak_flops,
    profile_kernels,
    split_busy_time,
    summarise,
    trace_events,
    union_length,
)


def test_kernel_names_are_classified():
    conv = [
        "cudnn::engines_precompiled::nchwToNhwcKernel",
        "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc",
        "void cudnn::winograd_nonfused::winogradForwardData4x4",
        "aten::convolution",
        "aten::cudnn_convolution_backward",
    ]
    other = ["void at::native::vectorized_elementwise_kernel<4>", "ampere_sgemm_128x64_nn"]
    assert [classify(n) for n in conv] == ["conv"] * len(conv)
    assert [classify(n) for n in other] == ["other"] * len(other)


def test_union_of_overlapping_intervals():
    # [0,2] and [1,3] overlap (3 covered), [3,4] touches them, [5,5] is empty, [6,8] apart.
    intervals = [(1.0, 3.0), (0.0, 2.0), (3.0, 4.0), (5.0, 5.0), (6.0, 8.0)]
    assert merge_intervals(intervals) == [(0.0, 4.0), (6.0, 8.0)]
    assert union_length(intervals) == 6.0
    assert union_length([]) == 0.0


def test_busy_time_split_by_hand():
    # Wall 10: a conv 0-3, another kernel 2-5 overlapping it by 1, a copy 7-8; busy 0-5 and
    # 7-8 = 6, conv 3, other 3, idle 4.
    events = [(0.0, 3.0, "implicit_gemm_conv"), (2.0, 5.0, "elementwise"), (7.0, 8.0, "memcpy")]
    times = split_busy_time(events, 10.0)
    assert times == {"conv": 3.0, "other": 3.0, "idle": 4.0, "busy": 6.0}


def test_outermost_drops_nested_operators():
    events = [(0.0, 10.0, "outer"), (1.0, 4.0, "inner"), (2.0, 3.0, "innermost"), (11, 12, "b")]
    assert [e[2] for e in outermost(events)] == ["outer", "b"]


def test_trace_events_pick_device_kernels():
    trace = {
        "traceEvents": [
            {"ph": "X", "cat": "kernel", "name": "k1", "ts": 0, "dur": 5},
            {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy HtoD", "ts": 6, "dur": 1},
            {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 0, "dur": 2},
            {"ph": "i", "cat": "kernel", "name": "instant", "ts": 3},
        ]
    }
    events, kernels = trace_events(trace, "cuda")
    assert events == [(0.0, 5.0, "k1"), (6.0, 7.0, "Memcpy HtoD")]
    assert kernels == 1


def test_peak_table_and_fraction():
    peak, source = peak_flops("NVIDIA H100 80GB HBM3", "bf16")
    assert peak == 989e12 and "H100 SXM" in source
    assert peak_flops("NVIDIA H100 PCIe", "tf32")[0] == 378e12
    assert peak_flops("AMD EPYC", "fp32")[0] is None
    # 0.64 TFLOP per image, 87.4 images/s on an H200 in bf16: 5.7% of 989 TFLOP/s.
    frac = achieved_fraction(0.64e12, 32, 32 / 87.4, "NVIDIA H200", "bf16")
    assert frac["fraction"] == pytest.approx(0.64e12 * 87.4 / 989e12)
    assert achieved_fraction(1.0, 1, 1.0, "cpu", "fp32")["fraction"] is None


def test_cpu_profile_of_a_known_workload():
    # n steps of exactly two outermost operators each (a conv and an add): the profile must
    # count 2 operators per step and find the conv.
    x = torch.rand(1, 3, 32, 32)
    w = torch.rand(4, 3, 3, 3)

    def steps(n: int) -> None:
        for _ in range(n):
            y = torch.nn.functional.conv2d(x, w)
            torch.add(y, 1.0)

    prof = profile_kernels(steps, 3, torch.device("cpu"))
    assert prof["iterations"] == 3
    assert prof["kernels_per_step"] == pytest.approx(2.0)
    assert sum(prof["shares"].values()) == pytest.approx(1.0)
    assert {k["class"] for k in prof["top_kernels"]} == {"conv", "other"}
    assert prof["busy_s_per_step"] <= prof["step_wall_s"] * 1.01


def test_summary_table_rows(tmp_path):
    refused = tmp_path / "a_refused.json"
    refused.write_text(json.dumps({"refused": "needs a CPU with native bf16"}))
    broken = tmp_path / "b_broken.json"
    broken.write_text("{")
    good = tmp_path / "c_good.json"
    good.write_text(
        json.dumps(
            {
                "config_file": "configs/tetrominoes.yaml",
                "setup": {"batch_size": 32, "precision": {"precision": "bf16"}},
                "train": {
                    "images_per_s": 761.0,
                    "step_time_s": {"median": 0.042},
                    "kernel_profile": {
                        "kernels_per_step": 1900,
                        "shares": {"conv": 0.25, "other": 0.5, "idle": 0.25},
                        "peak": {"fraction": 0.07},
                    },
                },
            }
        )
    )
    lines = summarise([str(good), str(refused), str(broken)]).splitlines()
    assert "refused: needs a CPU" in lines[2]
    assert "unreadable" in lines[3]
    row = lines[4].split()
    assert row[:4] == ["tetrominoes", "32", "bf16", "eager"]
    assert row[4:] == ["761.0", "42.0", "1900", "25.0%", "50.0%", "25.0%", "7.0"]
