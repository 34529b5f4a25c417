"""Measure IODINE's speed: images/s, peak memory, time shares and FLOPs of a step.

``run_benchmark(cfg, ...)`` (``tools/benchmark.py`` is its command line) uses random uniform
images in [0, 1] at INPUT.IMAGE_SIZE (no dataset) on MODEL.DEVICE. For each mode, after
``warmup`` untimed steps:

* ``steps`` plain timed steps give the median step time and images/s. A training step is
  an iteration of the training loop itself (``lib.engine.trainer.Trainer`` with a timing
  hook) on one batch: zero_grad, forward, ``loss.backward()``, clipping at
  SOLVER.GRAD_CLIP_NORM, the non-finite check decided on the device and the Adam step (no
  data loading, no scheduler); an inference step is
  ``model.eval()`` and the forward under ``torch.no_grad()``. MODEL.PRECISION and
  MODEL.DETERMINISTIC are applied as in training (``lib.engine.setup.setup_precision``):
  "bf16" wraps the forward in bf16 autocast, "tf32" allows TF32 on CUDA.
* peak memory over the timed steps: CUDA ``max_memory_allocated``; CPU the resident-set
  high-water mark (reset before the steps where Linux allows) and its rise over the resident set
  before them, plus the process's lifetime ``ru_maxrss``.
* ``profile_steps`` separate instrumented steps (CUDA synchronised at every boundary) give
  the share of the step in each part: decoder forward, gradient inputs (the model's
  ``torch.autograd.grad`` calls), refinement forward, final backward, and other (likelihood,
  input assembly, optimiser with clipping and the finite check; the optimiser's own share is
  listed too).
* one step under ``FlopCounterMode`` (on the meta device when it can, else on the real one;
  an uncompiled fp32 model of the same shape) gives FLOPs per image, per part, and with the
  median step time the achieved GFLOP/s.
* with ``profile``, ``profile_steps`` more steps back to back (no synchronisation between
  them, no hook) under ``torch.profiler`` (``lib.analysis.kernel_profile``) give
  ``kernel_profile``: the shares of the step's wall time in convolution kernels, other
  kernels and idle (wall minus the union of kernel busy intervals: launch gaps), kernels per
  step, the longest kernels, and ``peak``: the counted FLOP rate as a fraction of the
  device's dense peak at MODEL.PRECISION (None with the reason on a device not in the table).

SOLVER.COMPILE_STEP runs the training step compiled (``lib.engine.trainer``); the warm-up
steps then include the compilation (give enough), and the instrumented shares see only the
optimiser (the model's phases run inside the compiled region).
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from yacs.config import CfgNode

from lib.analysis import kernel_profile, profiling
from lib.engine.hooks import StepTimer
from lib.engine.precision import autocast_factory
from lib.engine.setup import resolve_device, seed_all, setup_precision
from lib.engine.solver import make_optimizer
from lib.engine.trainer import Trainer, compile_step_mode
from lib.errors import ConfigError
from lib.model import build_model

MODES = ("train", "infer")
SHARES = ("decoder", "grad_inputs", "refinement", "backward", "other")


def _infer_step(
    model: torch.nn.Module,
    images: torch.Tensor,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> None:
    """One inference forward: eval mode is set by the caller; no autograd graph is kept."""
    with torch.no_grad(), autocast():
        model(images)


def _plain_model(cfg: CfgNode, device: torch.device) -> torch.nn.Module:
    """A fresh uncompiled model of the same shape (FLOPs do not depend on the speed switches)."""
    plain = cfg.clone()
    plain.defrost()
    plain.MODEL.COMPILE = False
    seed_all(cfg.SEED)
    return build_model(plain).to(device)


def _count_mode_flops(
    cfg: CfgNode, mode: str, batch: int, size: int, device: torch.device, meta: bool = True
) -> dict[str, Any]:
    """FLOPs of one step of ``mode``: forward (+ ``loss.backward()`` for training).

    Counted on the meta device (shapes only, no arithmetic) when ``meta`` and every op
    supports it, else on ``device``. The optimiser is left out: it has no matrix products or
    convolutions, the only ops the counter counts.
    """

    def run(on: torch.device) -> dict[str, Any]:
        model = _plain_model(cfg, on)
        images = torch.rand(batch, 3, size, size, device=on)

        def step(timer: profiling.PhaseTimer) -> None:
            if mode == "train":
                model.train()
                out = model(images)
                with timer.phase("backward"):
                    out["loss"].backward()
            else:
                model.eval()
                with torch.no_grad():
                    model(images)

        result = profiling.count_flops(step, model, on)
        result["device"] = on.type
        return result

    if meta:
        try:
            return run(torch.device("meta"))
        except (NotImplementedError, RuntimeError):
            pass
    return run(device)


def _summary(times: list[float]) -> dict[str, Any]:
    """Median, min, max and every one of the step times (seconds)."""
    return {
        "median": statistics.median(times),
        "min": min(times),
        "max": max(times),
        "all": [round(t, 6) for t in times],
    }


def _measure_mode(
    mode: str,
    run: Callable[[int, profiling.PhaseTimer | None], list[float]],
    model: torch.nn.Module,
    device: torch.device,
    batch: int,
    steps: int,
    warmup: int,
    profile_steps: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Warm up, time plain steps (with peak memory), then time instrumented steps.

    ``run(n, timer)`` runs n steps (the device synchronised around each) and returns their
    wall times; ``timer`` is None or the instrumented steps' phase timer.
    """
    log(f"{mode}: {warmup} warm-up step(s)")
    run(warmup, None)
    profiling.synchronize(device)

    log(f"{mode}: {steps} timed step(s)")
    reset = profiling.reset_peak_memory(device)
    before = profiling.current_memory(device)
    times = run(steps, None)
    peak = profiling.peak_memory(device)
    median = statistics.median(times)

    log(f"{mode}: {profile_steps} instrumented step(s)")
    timer = profiling.PhaseTimer(device)
    with profiling.instrument(model, timer):
        total = sum(run(profile_steps, timer))
    parts = {name: timer.times.get(name, 0.0) for name in profiling.PHASES}
    other = total - sum(parts.values()) + parts["optimizer"]
    shares = {name: parts[name] / total for name in SHARES[:-1]}
    shares["other"] = other / total
    result = {
        "images_per_s": batch / median,
        "step_time_s": _summary(times),
        "peak_memory_bytes": peak,
        "peak_memory_increase_bytes": max(peak - before, 0),
        "memory_before_bytes": before,
        "peak_memory_kind": (
            "cuda max_memory_allocated"
            if device.type == "cuda"
            else ("rss high-water mark (VmHWM, reset)" if reset else "lifetime ru_maxrss")
        ),
        "shares": shares,
        "optimizer_share": parts["optimizer"] / total,
        "profiled_step_time_s": total / max(profile_steps, 1),
        "part_time_per_step_s": {n: t / max(profile_steps, 1) for n, t in parts.items()},
        "part_calls_per_step": {
            n: timer.calls.get(n, 0) / max(profile_steps, 1) for n in profiling.PHASES
        },
    }
    if device.type == "cpu":
        result["lifetime_max_rss_bytes"] = profiling.lifetime_max_rss()
    return result


def _check_args(
    cfg: CfgNode, batch_size: int, steps: int, warmup: int, mode: str, profile_steps: int
) -> tuple[tuple[str, ...], int, int]:
    """Validate ``run_benchmark``'s arguments and fill in their defaults.

    Returns:
        ``(modes, batch, profile_steps)``: the modes to run in order, the images per step and
        the instrumented steps per mode.

    Raises:
        ConfigError: a bad argument.
    """
    if steps < 1 or warmup < 0 or profile_steps < 0:
        raise ConfigError("need steps >= 1, warmup >= 0 and profile_steps >= 0")
    if mode not in (*MODES, "both"):
        raise ConfigError(f"mode must be train, infer or both, got {mode!r}")
    modes = MODES if mode == "both" else (mode,)
    batch = batch_size or cfg.SOLVER.IMS_PER_BATCH
    if batch < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch}")
    return modes, batch, profile_steps or min(steps, 3)


class _StepRunner:
    """The model, its optimiser, one fixed random batch and the ways to run steps on them.

    Built in the order a training run builds them (seed, model, optimiser, precision), so the
    model's initial weights and the images depend only on SEED.

    Args:
        cfg: the config (shape, SOLVER, MODEL.PRECISION, the speed switches).
        device: where the model runs.
        batch: images per step.

    Attributes:
        images: (batch, 3, S, S) float in [0, 1] on ``device``, S = INPUT.IMAGE_SIZE; every
            step uses them.
        precision: ``setup_precision``'s result (``"precision"``: the one in effect).
    """

    def __init__(self, cfg: CfgNode, device: torch.device, batch: int) -> None:
        size = cfg.INPUT.IMAGE_SIZE
        self.device = device
        seed_all(cfg.SEED)
        self.model = build_model(cfg).to(device)
        optimizer = make_optimizer(cfg, self.model)
        clip = cfg.SOLVER.GRAD_CLIP_NORM if cfg.SOLVER.GRAD_CLIP_NORM > 0 else math.inf
        self.precision = setup_precision(cfg, device)
        self.autocast = autocast_factory(self.precision["precision"], device)
        gen = torch.Generator().manual_seed(cfg.SEED)
        # Drawn on the CPU generator and copied, so the batch is the same on every device.
        self.images = torch.rand(batch, 3, size, size, generator=gen, device="cpu").to(device)
        # The training loop itself (``Trainer``), fed the same batch forever, without a
        # scheduler, timed by a hook.
        self.trainer = Trainer(
            self.model, optimizer, itertools.repeat((self.images, None)), None, device, 0, 0,
            (), 1, clip, self.autocast, compile_step_mode(cfg), cfg.SOLVER.COMPILE_BACKEND,
        )  # fmt: skip

    def timed(self, mode: str) -> Callable[[int, profiling.PhaseTimer | None], list[float]]:
        """``run(n, timer) -> wall times`` of n steps of ``mode``, each synchronised around
        (``_measure_mode``'s ``run``)."""
        return self._timed_train if mode == "train" else self._timed_infer

    def _timed_train(self, n: int, timer: profiling.PhaseTimer | None) -> list[float]:
        clock = StepTimer(self.device, profiling.synchronize)
        self.trainer.hooks = [clock]
        self.trainer.phase = timer.phase if timer is not None else None
        self._train(n)
        return clock.times

    def _timed_infer(self, n: int, timer: profiling.PhaseTimer | None) -> list[float]:
        self.model.eval()
        times = []
        for _ in range(n):
            profiling.synchronize(self.device)
            start = time.perf_counter()
            _infer_step(self.model, self.images, self.autocast)
            profiling.synchronize(self.device)
            times.append(time.perf_counter() - start)
        return times

    def back_to_back(self, mode: str) -> Callable[[int], None]:
        """``run(n)``: n steps of ``mode`` with no hook and no synchronisation in between, as a
        training run queues them: the profile's idle time is then the launch gaps, not the
        benchmark's syncs."""
        return self._back_to_back_train if mode == "train" else self._back_to_back_infer

    def _back_to_back_train(self, n: int) -> None:
        self.trainer.hooks, self.trainer.phase = [], None
        self._train(n)

    def _back_to_back_infer(self, n: int) -> None:
        self.model.eval()
        for _ in range(n):
            _infer_step(self.model, self.images, self.autocast)

    def _train(self, n: int) -> None:
        # The trainer carries on from its last iteration.
        trainer = self.trainer
        trainer.start_iter, trainer.max_iter = trainer.iter, trainer.iter + n
        trainer.train()


def _add_flops(
    res: dict[str, Any], cfg: CfgNode, mode: str, batch: int, device: torch.device
) -> None:
    """Add ``flops_per_image``, ``flops_per_image_by_part`` (None when the count has no
    phases), ``flop_count_device`` and ``gflops_per_s`` (at the median step time) to ``res``,
    ``_measure_mode``'s result for ``mode``."""
    flops = _count_mode_flops(cfg, mode, batch, cfg.INPUT.IMAGE_SIZE, device)
    res["flops_per_image"] = flops["total"] / batch
    res["flops_per_image_by_part"] = (
        {n: v / batch for n, v in flops["phases"].items()} if flops["phases"] else None
    )
    res["flop_count_device"] = flops["device"]
    res["gflops_per_s"] = flops["total"] / res["step_time_s"]["median"] / 1e9


def _kernel_profile(
    runner: _StepRunner, mode: str, res: dict[str, Any], batch: int, profile_steps: int
) -> dict[str, Any]:
    """``torch.profiler`` over ``profile_steps`` back-to-back steps of ``mode``, plus ``peak``:
    the counted FLOP rate (``res``'s FLOPs and median step time) as a fraction of the device's
    peak at the precision in effect."""
    device = runner.device
    prof = kernel_profile.profile_kernels(runner.back_to_back(mode), profile_steps, device)
    prof["peak"] = kernel_profile.achieved_fraction(
        res["flops_per_image"], batch, res["step_time_s"]["median"],
        profiling.device_name(device), runner.precision["precision"],
    )  # fmt: skip
    return prof


def _env(device: torch.device, load_before: Any) -> dict[str, Any]:
    """The result's ``env``: date, device, versions, threads and the load average before
    (``load_before``) and now."""
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": device.type,
        "device_name": profiling.device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": profiling.load_average(),
    }


def _setup(
    cfg: CfgNode, counts: dict[str, int], profile: bool, precision: dict[str, Any]
) -> dict[str, Any]:
    """The result's ``setup``: ``counts`` (batch_size, steps, warmup, profile_steps), the
    model's shape and the speed switches."""
    d, r, m = cfg.MODEL.DECODER, cfg.MODEL.REFINEMENT, cfg.MODEL.IODINE
    return {
        **counts,
        "image_size": cfg.INPUT.IMAGE_SIZE,
        "num_slots": m.NUM_SLOTS,
        "num_iters": m.NUM_ITERS,
        "latent_dim": m.LATENT_DIM,
        "decoder": {
            "conv_channels": list(d.CONV_CHANNELS),
            "kernel_size": d.KERNEL_SIZE,
            "output_kernel_size": d.OUTPUT_KERNEL_SIZE,
            "factorized_first_layer": d.FACTORIZED_FIRST_LAYER,
        },
        "refinement": {
            "conv_channels": list(r.CONV_CHANNELS),
            "kernel_size": r.KERNEL_SIZE,
            "mlp_sizes": list(r.MLP_SIZES),
            "lstm_size": r.LSTM_SIZE,
            "coord_type": r.COORD_TYPE,
        },
        "channels_last": cfg.MODEL.CHANNELS_LAST,
        "compile": cfg.MODEL.COMPILE,
        "compile_step": cfg.SOLVER.COMPILE_STEP,
        "compile_mode": cfg.SOLVER.COMPILE_MODE if cfg.SOLVER.COMPILE_STEP else None,
        "compile_backend": cfg.SOLVER.COMPILE_BACKEND if cfg.SOLVER.COMPILE_STEP else None,
        "profile": profile,
        "amp_active": precision["precision"] == "bf16",
        "precision": precision,
    }


def run_benchmark(
    cfg: CfgNode,
    batch_size: int = 0,
    steps: int = 10,
    warmup: int = 2,
    mode: str = "both",
    profile_steps: int = 0,
    log: Callable[[str], None] | None = None,
    profile: bool = False,
) -> dict[str, Any]:
    """Benchmark one configuration.

    Args:
        cfg: config from ``load_cfg`` (MODEL.DEVICE, the shape, the speed switches).
        batch_size: images per step; 0 = SOLVER.IMS_PER_BATCH.
        steps: timed steps per mode (>= 1).
        warmup: untimed steps per mode before them (>= 0).
        mode: "train", "infer" or "both".
        profile_steps: instrumented steps for the time shares; 0 = min(steps, 3).
        log: progress messages (None: quiet).
        profile: also profile ``profile_steps`` steps per mode with ``torch.profiler``
            (``kernel_profile`` in each mode's result).

    Returns:
        A JSON-serialisable dict: ``env`` (date, device, torch, threads, load), ``setup``
        (batch, steps, shape, switches), ``config`` (YAML), and per mode ``train`` / ``infer``:
        ``images_per_s``, ``step_time_s``, peak memory, ``shares`` (decoder, grad_inputs,
        refinement, backward, other; they sum to 1), ``flops_per_image``,
        ``flops_per_image_by_part``, ``gflops_per_s``, with ``profile`` ``kernel_profile``
        (``lib.analysis.kernel_profile.profile_kernels``'s result plus ``peak``:
        ``achieved_fraction``).

    Raises:
        ValueError: a bad argument.
        RunError: MODEL.DEVICE is "cuda" without CUDA, or bf16 without native support.
    """
    log = log or (lambda _: None)
    modes, batch, profile_steps = _check_args(cfg, batch_size, steps, warmup, mode, profile_steps)
    device = resolve_device(cfg.MODEL.DEVICE)
    load_before = profiling.load_average()
    runner = _StepRunner(cfg, device, batch)

    results: dict[str, Any] = {}
    for name in modes:
        seed_all(cfg.SEED)  # each mode draws the same noise, whichever runs first
        res = _measure_mode(
            name, runner.timed(name), runner.model, device, batch, steps, warmup, profile_steps,
            log,
        )  # fmt: skip
        log(f"{name}: counting FLOPs")
        _add_flops(res, cfg, name, batch, device)
        if profile:
            log(f"{name}: {profile_steps} profiled step(s) (torch.profiler)")
            res["kernel_profile"] = _kernel_profile(runner, name, res, batch, profile_steps)
        results[name] = res
    runner.model.train()

    counts = {"batch_size": batch, "steps": steps, "warmup": warmup, "profile_steps": profile_steps}
    return {
        "env": _env(device, load_before),
        "setup": _setup(cfg, counts, profile, runner.precision),
        "config": cfg.dump(),
        **results,
    }


# ----------------------------------------------------------------------------------------------
def _mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def format_report(result: dict[str, Any]) -> str:
    """The results as a readable table.

    Args:
        result: ``run_benchmark``'s output.

    Returns:
        Multi-line text.
    """
    env, s = result["env"], result["setup"]
    d, r = s["decoder"], s["refinement"]
    dec = "x".join(str(c) for c in d["conv_channels"])
    ref = "x".join(str(c) for c in r["conv_channels"])
    lines = [
        f"IODINE benchmark  {env['date']}  torch {env['torch']}  python {env['python']}",
        f"device: {env['device']} ({env['device_name']}), {env['threads']} threads, "
        f"{env['cpu_count']} cpus, load {env['load_average_before']} -> "
        f"{env['load_average_after']}",
        f"shape: {s['image_size']}x{s['image_size']}  K={s['num_slots']}  T={s['num_iters']}  "
        f"D={s['latent_dim']}  batch {s['batch_size']}",
        f"decoder: convs {dec} k{d['kernel_size']}, output k{d['output_kernel_size']}, "
        f"factorized first layer {d['factorized_first_layer']}",
        f"refinement: convs {ref} k{r['kernel_size']}, mlp {tuple(r['mlp_sizes'])}, "
        f"lstm {r['lstm_size']}, {r['coord_type']} coordinates",
        f"switches: channels_last {s['channels_last']}  compile {s['compile']}  "
        f"compile_step {s.get('compile_mode') or 'off'}  "
        f"precision {s['precision']['precision']}"
        f"   ({s['warmup']} warm-up, {s['steps']} timed, {s['profile_steps']} profiled steps)",
        "",
        f"{'mode':<6}{'img/s':>9}{'step ms (med)':>15}{'min-max ms':>16}{'peak mem':>11}"
        f"{'+during':>10}{'GFLOP/img':>11}{'GFLOP/s':>9}",
    ]
    modes = [m for m in MODES if m in result]
    for m in modes:
        x = result[m]
        t = x["step_time_s"]
        lines.append(
            f"{m:<6}{x['images_per_s']:>9.2f}{t['median'] * 1e3:>15.1f}"
            f"{'{:.0f}-{:.0f}'.format(t['min'] * 1e3, t['max'] * 1e3):>16}"
            f"{_mib(x['peak_memory_bytes']):>11}{_mib(x['peak_memory_increase_bytes']):>10}"
            f"{x['flops_per_image'] / 1e9:>11.3f}{x['gflops_per_s']:>9.2f}"
        )
    lines += ["", f"{'share':<6}" + "".join(f"{n:>12}" for n in SHARES) + f"{'(optimizer)':>13}"]
    for m in modes:
        x = result[m]
        lines.append(
            f"{m:<6}"
            + "".join(f"{x['shares'][n]:>12.1%}" for n in SHARES)
            + f"{x['optimizer_share']:>13.1%}"
        )
    lines += ["", f"{'GFLOP/img':<10}" + "".join(f"{n:>12}" for n in SHARES)]
    for m in modes:
        parts = result[m]["flops_per_image_by_part"]
        if parts:
            # Counted FLOPs of the optimiser (none: element-wise) belong to "other".
            merged = dict(parts, other=parts["other"] + parts.get("optimizer", 0))
            lines.append(f"{m:<10}" + "".join(f"{merged[n] / 1e9:>12.3f}" for n in SHARES))
    profiled = [m for m in modes if "kernel_profile" in result[m]]
    if profiled:
        lines += [
            "",
            f"{'profile':<8}{'activity':<27}{'wall ms':>9}{'kernels':>9}{'conv':>8}"
            f"{'other':>8}{'idle':>8}{'of peak':>9}",
        ]
    for m in profiled:
        p = result[m]["kernel_profile"]
        frac = p["peak"]["fraction"]
        lines.append(
            f"{m:<8}{p['activity']:<27}{p['step_wall_s'] * 1e3:>9.1f}"
            f"{p['kernels_per_step']:>9.0f}"
            + "".join(f"{p['shares'][n]:>8.1%}" for n in ("conv", "other", "idle"))
            + f"{'-' if frac is None else format(frac, '.2%'):>9}"
        )
    for m in profiled:
        lines.append(f"{m} peak: {result[m]['kernel_profile']['peak']['peak_source']}")
    return "\n".join(lines)
