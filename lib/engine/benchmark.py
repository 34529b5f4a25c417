"""Measure IODINE's speed: images/s, peak memory, FLOPs and (optionally) a profile of a step.

``run_benchmark(cfg, ...)`` (``tools/benchmark.py`` is its command line) feeds one fixed batch
of random images in [0, 1] at INPUT.IMAGE_SIZE (no dataset) to the model on MODEL.DEVICE, with
MODEL.PRECISION applied as in training. A training step is the training loop's own
``Trainer.run_step`` (forward, backward, clipping, the device-side finite check, the update;
no data loading, no scheduler); an inference step is the forward in eval mode under
``torch.no_grad()``. Each timed step is synchronised around, so its time is the device's.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import math
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.utils.flop_counter import FlopCounterMode
from yacs.config import CfgNode

from lib.engine.precision import autocast_factory
from lib.engine.setup import resolve_device, seed_all, setup_precision
from lib.engine.solver import make_optimizer
from lib.engine.trainer import Trainer
from lib.errors import ConfigError
from lib.model import build_model

MODES = ("train", "infer")
# The parts whose time --profile reports apart: range name -> the IODINE method wrapped.
PARTS = {"decoder": "decode", "refinement": "_refine"}
TOP_OPERATORS = 15


def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # asynchronous: unsynchronised, the clock times launches only
        torch.cuda.synchronize(device)


def _peak_memory(device: torch.device) -> int:
    """Peak bytes: CUDA ``max_memory_allocated``, else the process's resident-set high-water
    mark (``ru_maxrss``: kilobytes on Linux, bytes on macOS)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss) if platform.system() == "Darwin" else int(rss) * 1024


def _count_flops(cfg: CfgNode, mode: str, images: torch.Tensor) -> int:
    """FLOPs of one step of ``mode`` (forward, plus ``loss.backward()`` when training), on a
    fresh uncompiled fp32 model of the same shape (the counter cannot see into compiled code;
    the optimiser has no matrix product or convolution, the only ops it counts)."""
    plain = cfg.clone()
    plain.defrost()
    plain.MODEL.COMPILE = False
    model = build_model(plain).to(images.device).train(mode == "train")
    # Gradients stay on for inference too: the counter's module hooks fail under no_grad on
    # IODINE's refinement inputs, and the counted ops are the same either way.
    with FlopCounterMode(display=False) as counter:
        out = model(images.float())
        if mode == "train":
            out["loss"].backward()
    return counter.get_total_flops()


@contextlib.contextmanager
def _part_ranges(model: torch.nn.Module) -> Iterator[None]:
    """``record_function("iodine.decoder")`` around every ``IODINE.decode`` call (the decoder,
    masks and reconstruction) and ``"iodine.refinement"`` around every ``_refine`` call (input
    assembly and the refinement network), wrapped on the instance from outside and restored on
    exit (the model itself knows no profiler). A part compiled by MODEL.COMPILE is a function
    set on the instance, so it is wrapped whole, where module hooks would never fire."""
    saved = {}
    for part, attr in PARTS.items():
        saved[attr] = model.__dict__.get(attr)  # a compiled function, or None: the method

        def wrapped(*args: Any, _call: Any = getattr(model, attr), _name: str = part) -> Any:
            with torch.profiler.record_function(f"iodine.{_name}"):
                return _call(*args)

        setattr(model, attr, wrapped)
    try:
        yield
    finally:
        for attr, value in saved.items():
            if value is None:
                delattr(model, attr)
            else:
                setattr(model, attr, value)


def _profile(
    model: torch.nn.Module, step: Callable[[], None], n: int, device: torch.device
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Over ``n`` steps under ``torch.profiler``: the TOP_OPERATORS operators of largest self
    time (device time on CUDA, reported too) and the time of each part's forward calls
    (``ranges``: "iodine.decoder", "iodine.refinement"; the share of time per part)."""
    cuda = device.type == "cuda"
    acts = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with _part_ranges(model), torch.profiler.profile(activities=acts) as prof:
        for _ in range(n):
            step()
        _sync(device)
    fields = {"self_time_s": "self_cpu_time_total", "total_time_s": "cpu_time_total"}
    if cuda:
        fields.update(
            self_device_time_s="self_device_time_total", device_time_s="device_time_total"
        )

    def row(e: Any) -> dict[str, Any]:
        return {
            "name": e.key,
            "calls": e.count,
            **{k: getattr(e, a) / 1e6 for k, a in fields.items()},
        }

    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = prof.key_averages()
    ops = sorted(
        (e for e in events if not e.key.startswith("iodine.")),
        key=lambda e: getattr(e, key),
        reverse=True,
    )
    # A range is a CPU event (on CUDA a GPU annotation of the same name is listed too).
    names = {f"iodine.{p}" for p in PARTS}
    ranges = {e.key: row(e) for e in events if e.key in names and e.device_type == DeviceType.CPU}
    return [row(e) for e in ops[:TOP_OPERATORS]], ranges


def _measure(step: Callable[[], None], device: torch.device, steps: int, warmup: int):
    """Warm up, then time ``steps`` synchronised steps: (times, peak, peak increase)."""
    for _ in range(warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before = _peak_memory(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    peak = _peak_memory(device)
    return times, peak, max(peak - before, 0)


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
        cfg: config from ``load_cfg`` (MODEL.DEVICE, MODEL.PRECISION, the shape, switches).
        batch_size: images per step; 0 = SOLVER.IMS_PER_BATCH.
        steps: timed steps per mode (>= 1).
        warmup: untimed steps per mode before them (>= 0).
        mode: "train", "infer" or "both".
        profile_steps: profiled steps per mode with ``profile``; 0 = min(steps, 3).
        log: progress messages (None: quiet).
        profile: also run ``profile_steps`` steps per mode under ``torch.profiler``.

    Returns:
        A JSON-serialisable dict: ``env``, ``setup``, ``config`` (YAML) and per mode
        (``train`` / ``infer``): ``images_per_s`` (batch / median step time),
        ``step_time_s`` ({"median", "all"}), ``peak_memory_bytes``,
        ``peak_memory_increase_bytes``, ``flops_per_image``, ``gflops_per_s``; with
        ``profile`` also ``top_operators`` and ``ranges`` (time per part).

    Raises:
        ConfigError: a bad argument.
        RunError: MODEL.DEVICE "cuda" without CUDA, or a precision this device refuses.
    """
    log = log or (lambda _: None)
    batch = batch_size or cfg.SOLVER.IMS_PER_BATCH
    if steps < 1 or warmup < 0 or profile_steps < 0 or batch < 1 or mode not in (*MODES, "both"):
        raise ConfigError(
            "need steps >= 1, warmup >= 0, profile_steps >= 0, batch size >= 1 and mode train, "
            f"infer or both; got {steps}, {warmup}, {profile_steps}, {batch} and {mode!r}"
        )
    profile_steps = profile_steps or min(steps, 3)
    device = resolve_device(cfg.MODEL.DEVICE)
    load_before = [round(x, 2) for x in os.getloadavg()]

    # Built in a training run's order, so weights and images depend only on SEED.
    seed_all(cfg.SEED)
    model = build_model(cfg).to(device)
    optimizer = make_optimizer(cfg, model)
    precision = setup_precision(cfg, device)
    autocast = autocast_factory(precision["precision"], device)
    size = cfg.INPUT.IMAGE_SIZE
    gen = torch.Generator().manual_seed(cfg.SEED)  # drawn on the CPU: same batch everywhere
    images = torch.rand(batch, 3, size, size, generator=gen, device="cpu").to(device)
    clip = cfg.SOLVER.GRAD_CLIP_NORM if cfg.SOLVER.GRAD_CLIP_NORM > 0 else math.inf
    trainer = Trainer(
        model, optimizer, itertools.repeat((images, None)), None, device, 0, 0, (), 1, clip,
        autocast,
    )  # fmt: skip

    def infer_step() -> None:
        with torch.no_grad(), autocast():
            model(images)

    results: dict[str, Any] = {}
    for name in MODES if mode == "both" else (mode,):
        seed_all(cfg.SEED)  # each mode draws the same noise, whichever runs first
        model.train(name == "train")
        step = trainer.run_step if name == "train" else infer_step
        log(f"{name}: {warmup} warm-up and {steps} timed step(s), then the FLOP count")
        times, peak, increase = _measure(step, device, steps, warmup)
        median = statistics.median(times)
        flops = _count_flops(cfg, name, images)
        results[name] = {
            "images_per_s": batch / median,
            "step_time_s": {"median": median, "all": [round(t, 6) for t in times]},
            "peak_memory_bytes": peak,
            "peak_memory_increase_bytes": increase,
            "flops_per_image": flops / batch,
            "gflops_per_s": flops / median / 1e9,
        }
        if profile:
            log(f"{name}: {profile_steps} profiled step(s)")
            results[name]["top_operators"], results[name]["ranges"] = _profile(
                model, step, profile_steps, device
            )
    model.train()

    m = cfg.MODEL.IODINE
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    env = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": device.type,
        "device_name": gpu or platform.processor() or platform.machine(),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "python": platform.python_version(), "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }  # fmt: skip
    setup = {
        "batch_size": batch, "steps": steps, "warmup": warmup, "profile_steps": profile_steps,
        "image_size": size, "num_slots": m.NUM_SLOTS, "num_iters": m.NUM_ITERS,
        "latent_dim": m.LATENT_DIM, "channels_last": cfg.MODEL.CHANNELS_LAST,
        "compile": cfg.MODEL.COMPILE, "profile": profile, "precision": precision,
    }  # fmt: skip
    return {"env": env, "setup": setup, "config": cfg.dump(), **results}


def format_report(result: dict[str, Any]) -> str:
    """``run_benchmark``'s result as a readable table (multi-line text)."""
    env, s = result["env"], result["setup"]
    lines = [
        f"IODINE benchmark  {env['date']}  torch {env['torch']}  "
        f"{env['device']} ({env['device_name']}), {env['threads']} threads",
        f"{s['image_size']}x{s['image_size']}  K={s['num_slots']}  T={s['num_iters']}  "
        f"D={s['latent_dim']}  batch {s['batch_size']}  precision "
        f"{s['precision']['precision']}  channels_last {s['channels_last']}  "
        f"compile {s['compile']}",
        f"{'mode':<6}{'img/s':>9}{'step ms':>9}{'peak MiB':>10}{'GFLOP/img':>11}{'GFLOP/s':>9}",
    ]
    for m in (m for m in MODES if m in result):
        x = result[m]
        lines.append(
            f"{m:<6}{x['images_per_s']:>9.2f}{x['step_time_s']['median'] * 1e3:>9.1f}"
            f"{x['peak_memory_bytes'] / 2**20:>10.0f}{x['flops_per_image'] / 1e9:>11.3f}"
            f"{x['gflops_per_s']:>9.2f}"
        )
        for op in x.get("top_operators", [])[:5]:
            lines.append(f"    {op['name']:<40}{op['calls']:>7}{op['self_time_s'] * 1e3:>10.1f} ms")
    return "\n".join(lines)
