"""Where the device time of a step goes: convolution kernels, other kernels, idle gaps.

``profile_kernels(fn, iterations, device)`` runs ``fn`` (one step) ``iterations`` times under
``torch.profiler`` and splits the host wall time of those steps into

* ``conv``: time some convolution kernel runs (cuDNN, implicit-GEMM conv, layout transforms
  made for them), by the kernel name (``classify``);
* ``other``: time other kernels, copies or fills run and no convolution does;
* ``idle``: wall time minus the union of all kernels' busy intervals: launch gaps, host
  work the device waits for, synchronisations.

On CUDA the events are the device's kernels, copies and fills (``ProfilerActivity.CUDA``
alone, the least host overhead); on the CPU, so that the machinery can be tested, they are
the outermost CPU operators (``ProfilerActivity.CPU``), and "idle" is the Python between them.
The pure pieces (``classify``, ``union_length``, ``split_busy_time``) take ``(start, end,
name)`` tuples; ``peak_flops`` and ``achieved_fraction`` relate a FLOP rate to the device's
dense peak; ``summarise`` tabulates the benchmark's JSON files (``tools/gpu_profile.sh``).
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

Event = tuple[float, float, str]  # (start, end, name), any one time unit

# Kernel names of convolutions: cuDNN's own (``cudnn::``, ``cudnn_``, ``cask_cudnn``), the
# implicit-GEMM / Winograd / FFT / direct engines it and cutlass use (fprop = forward, dgrad =
# input gradient, wgrad = weight gradient), and the NCHW <-> NHWC transforms cuDNN runs around
# them; on the CPU the convolution operators and their autograd nodes.
CONV_PATTERN = re.compile(
    r"conv|cudnn|implicit_gemm|implicit_convolve|winograd|fprop|dgrad|wgrad|fft2d|fft3d"
    r"|nchwtonhwc|nhwctonchw|cask_",
    re.IGNORECASE,
)

# Dense (no sparsity) peak TFLOP/s per precision, from NVIDIA's data sheets. "fp32" is the
# plain FP32 rate (MODEL.PRECISION fp32 turns TF32 off); "tf32" and "bf16" the tensor cores.
# Matched in order against torch.cuda.get_device_name (lower case).
PEAK_TFLOPS: tuple[tuple[str, str, dict[str, float]], ...] = (
    ("h200", "H200 (SXM figures)", {"fp32": 67.0, "tf32": 494.0, "bf16": 989.0}),
    ("h100 pcie", "H100 PCIe", {"fp32": 51.0, "tf32": 378.0, "bf16": 756.0}),
    ("h100", "H100 SXM", {"fp32": 67.0, "tf32": 494.0, "bf16": 989.0}),
)


def classify(name: str) -> str:
    """The class of a kernel or operator by its name.

    Args:
        name: the profiler event's name.

    Returns:
        "conv" for convolution work, else "other".
    """
    return "conv" if CONV_PATTERN.search(name) else "other"


def merge_intervals(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The union of intervals as disjoint sorted intervals (empty ones dropped).

    Args:
        intervals: ``(start, end)`` pairs.

    Returns:
        Sorted, non-overlapping ``(start, end)`` pairs; touching intervals are joined.
    """
    merged: list[tuple[float, float]] = []
    for start, end in sorted((s, e) for s, e in intervals if e > s):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def union_length(intervals: Iterable[tuple[float, float]]) -> float:
    """Total length covered by at least one interval (overlaps counted once).

    Args:
        intervals: ``(start, end)`` pairs.

    Returns:
        The length of their union.
    """
    return sum(end - start for start, end in merge_intervals(intervals))


def outermost(events: Sequence[Event]) -> list[Event]:
    """The events not nested inside another (CPU operators call operators: count the caller).

    Args:
        events: ``(start, end, name)``.

    Returns:
        The events no earlier-starting event contains, in start order.
    """
    kept: list[Event] = []
    end_of_open = -math.inf
    for event in sorted(events, key=lambda e: (e[0], -e[1])):
        if event[1] <= end_of_open:
            continue  # inside the current outermost event
        kept.append(event)
        end_of_open = event[1]
    return kept


def split_busy_time(events: Sequence[Event], wall: float) -> dict[str, float]:
    """Split ``wall`` into convolution, other-kernel and idle time.

    Args:
        events: the kernels ``(start, end, name)``, in the unit of ``wall``.
        wall: the wall time the events fall in.

    Returns:
        ``{"conv", "other", "idle", "busy"}`` times: ``conv`` the union of the convolution
        events, ``other`` the rest of the union of all events, ``busy`` their sum and ``idle``
        ``wall - busy`` (at least 0: events overhanging the wall are not idle time).
    """
    busy = union_length((s, e) for s, e, _ in events)
    conv = union_length((s, e) for s, e, name in events if classify(name) == "conv")
    return {"conv": conv, "other": busy - conv, "idle": max(wall - busy, 0.0), "busy": busy}


def shares(times: dict[str, float], wall: float) -> dict[str, float]:
    """Conv / other / idle as fractions of ``wall`` (they sum to 1 when busy <= wall).

    Args:
        times: ``split_busy_time``'s result.
        wall: the wall time (> 0).

    Returns:
        ``{"conv", "other", "idle"}`` fractions.
    """
    total = max(wall, times["busy"])  # overhang (timebase skew) must not give shares > 1
    return {name: times[name] / total for name in ("conv", "other", "idle")}


def peak_flops(device_name: str, precision: str) -> tuple[float | None, str]:
    """The dense peak FLOP/s of a GPU at a precision, from ``PEAK_TFLOPS``.

    Args:
        device_name: ``torch.cuda.get_device_name`` (or the CPU's name).
        precision: "fp32", "tf32" or "bf16".

    Returns:
        ``(flops_per_s, source)``; ``(None, reason)`` for a device or precision not in the table.
    """
    lowered = device_name.lower()
    for key, label, table in PEAK_TFLOPS:
        if key in lowered:
            if precision not in table:
                return None, f"no {precision} peak for {label} in the table"
            return table[
                precision
            ] * 1e12, f"{label} dense {precision} {table[precision]:g} TFLOP/s"
    return None, f"no peak known for device {device_name!r} (table: H100 SXM/PCIe, H200)"


def achieved_fraction(
    flops_per_image: float, batch: int, step_time_s: float, device_name: str, precision: str
) -> dict[str, Any]:
    """The counted FLOP rate of a step as a fraction of the device's peak.

    Args:
        flops_per_image: the benchmark's ``flops_per_image`` (matrix products and
            convolutions only: element-wise work counts zero).
        batch: images per step.
        step_time_s: the median step time.
        device_name: for ``peak_flops``.
        precision: for ``peak_flops``.

    Returns:
        ``{"flops_per_s", "peak_flops_per_s", "fraction", "peak_source"}``; the peak and the
        fraction are None (with the reason in ``peak_source``) on an unknown device.
    """
    rate = flops_per_image * batch / step_time_s
    peak, source = peak_flops(device_name, precision)
    return {
        "flops_per_s": rate,
        "peak_flops_per_s": peak,
        "fraction": None if peak is None else rate / peak,
        "peak_source": source,
    }


def trace_events(trace: dict[str, Any], device_type: str) -> tuple[list[Event], int]:
    """The busy events of a Chrome trace (``torch.profiler`` export) and the kernel count.

    Args:
        trace: the parsed trace JSON.
        device_type: "cuda": kernels, copies and fills; else: the outermost CPU operators.

    Returns:
        ``(events, kernels)``: ``(start_us, end_us, name)`` and how many are kernels (CUDA)
        or operators (CPU).
    """
    rows = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and "dur" in e]
    if device_type == "cuda":
        cats = ("kernel", "gpu_memcpy", "gpu_memset")
        events = [
            (float(e["ts"]), float(e["ts"]) + float(e["dur"]), str(e.get("name", "")))
            for e in rows
            if e.get("cat") in cats
        ]
        kernels = sum(1 for e in rows if e.get("cat") == "kernel")
        return events, kernels
    ops = [
        (float(e["ts"]), float(e["ts"]) + float(e["dur"]), str(e.get("name", "")))
        for e in rows
        if e.get("cat") == "cpu_op"
    ]
    top = outermost(ops)
    return top, len(top)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_kernels(
    fn: Callable[[int], None], iterations: int, device: torch.device
) -> dict[str, Any]:
    """Profile ``iterations`` steps and split their wall time (see the module docstring).

    Args:
        fn: ``fn(n)`` runs n steps back to back (no synchronisation between them, as in
            training); it is called once, under the profiler.
        iterations: n (>= 1).
        device: the steps' device (CUDA: device kernels; else CPU operators).

    Returns:
        ``{"activity", "iterations", "step_wall_s", "busy_s_per_step", "kernels_per_step",
        "time_per_step_s": {conv, other, idle}, "shares": {conv, other, idle}, "top_kernels":
        [{name, class, total_s_per_step, calls_per_step}] (the 15 longest)}``. The wall time is
        the host's, the device synchronised before and after.
    """
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activity = ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU
    _synchronize(device)
    with profile(activities=[activity]) as prof:
        start = time.perf_counter()
        fn(iterations)
        _synchronize(device)
        wall_us = (time.perf_counter() - start) * 1e6
    # The Chrome trace carries each event's category (kernel, memcpy, cpu_op) on every torch.
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        prof.export_chrome_trace(path)
        with open(path, encoding="utf-8") as f:
            trace = json.load(f)
    events, kernels = trace_events(trace, device.type)
    times = split_busy_time(events, wall_us)
    per_name: dict[str, list[float]] = {}
    for start_us, end_us, name in events:
        entry = per_name.setdefault(name, [0.0, 0])
        entry[0] += end_us - start_us
        entry[1] += 1
    top = sorted(per_name.items(), key=lambda item: -item[1][0])[:15]
    return {
        "activity": "cuda kernels" if cuda else "cpu operators (outermost)",
        "iterations": iterations,
        "step_wall_s": wall_us / 1e6 / iterations,
        "busy_s_per_step": times["busy"] / 1e6 / iterations,
        "kernels_per_step": kernels / iterations,
        "time_per_step_s": {n: times[n] / 1e6 / iterations for n in ("conv", "other", "idle")},
        "shares": shares(times, wall_us),
        "top_kernels": [
            {
                "name": name,
                "class": classify(name),
                "total_s_per_step": total / 1e6 / iterations,
                "calls_per_step": calls / iterations,
            }
            for name, (total, calls) in top
        ],
    }


# ----------------------------------------------------------------------------------------------
def _variant(result: dict[str, Any]) -> str:
    s = result.get("setup", {})
    parts = []
    if s.get("compile_step"):
        parts.append(f"step:{s.get('compile_mode')}")
    if s.get("compile"):
        parts.append("model")
    if s.get("channels_last"):
        parts.append("NHWC")
    return "+".join(parts) or "eager"


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def summarise(files: Iterable[str], mode: str = "train") -> str:
    """One table over benchmark JSON files written with ``--profile`` (``tools/gpu_profile.sh``).

    Args:
        files: paths of ``tools/benchmark.py --json`` outputs (refusals and unreadable files
            get a row saying so).
        mode: "train" or "infer".

    Returns:
        The table as text: config, batch, precision, variant, images/s, step ms, kernels per
        step, conv / other / idle shares of the step, fraction of the precision's peak.
    """
    head = (
        f"{'config':<18}{'batch':>6} {'prec':<5}{'variant':<26}{'img/s':>9}{'step ms':>9}"
        f"{'kernels':>9}{'conv':>7}{'other':>7}{'idle':>7}{'% peak':>8}"
    )
    lines = [head, "-" * len(head)]
    for path in sorted(files):
        name = os.path.basename(path)
        try:
            with open(path, encoding="utf-8") as f:
                result = json.load(f)
        except (OSError, ValueError) as exc:
            lines.append(f"{name}: unreadable ({exc})")
            continue
        if "refused" in result:
            lines.append(f"{name}: refused: {result['refused']}")
            continue
        if mode not in result:
            lines.append(f"{name}: no {mode} results")
            continue
        stem = os.path.splitext(os.path.basename(result.get("config_file") or "defaults"))[0]
        s, r = result["setup"], result[mode]
        prof = r.get("kernel_profile") or {}
        sh = prof.get("shares", {})
        frac = (prof.get("peak") or {}).get("fraction")
        lines.append(
            f"{stem:<18}{s['batch_size']:>6} {s['precision']['precision']:<5}"
            f"{_variant(result):<26}{r['images_per_s']:>9.1f}"
            f"{r['step_time_s']['median'] * 1e3:>9.1f}"
            f"{_fmt(prof.get('kernels_per_step'), '.0f'):>9}"
            f"{_fmt(sh.get('conv'), '.1%'):>7}{_fmt(sh.get('other'), '.1%'):>7}"
            f"{_fmt(sh.get('idle'), '.1%'):>7}{_fmt(None if frac is None else 100 * frac, '.1f'):>8}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lib.analysis.kernel_profile FILE.json ...``: print ``summarise``'s table.

    Args:
        argv: the JSON paths (None: ``sys.argv[1:]``).

    Returns:
        0.
    """
    import sys

    paths = list(sys.argv[1:] if argv is None else argv)
    print(summarise(paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
