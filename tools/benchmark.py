"""Measure IODINE's speed: images/s, peak memory, where a training step goes, FLOPs.

    python tools/benchmark.py --config-file configs/tetrominoes.yaml [--batch-size 16]
        [--steps 5] [--warmup 2] [--mode both] [--json OUT.json] [KEY VALUE ...]

Random images at INPUT.IMAGE_SIZE (no dataset needed). Training images/s is the median over
the timed steps of one full step (forward, backward, gradient clipping, Adam); inference
images/s the median of eval-mode forwards under ``torch.no_grad()``. A separate instrumented
step gives the share of a training step spent decoding, computing the gradient inputs (the
``torch.autograd.grad`` calls), in the refinement network and in the final backward pass;
FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` over one step.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import lib.model.iodine as iodine_module  # noqa: E402
from lib.config import load_cfg  # noqa: E402
from lib.engine.launch import resolve_device  # noqa: E402
from lib.model import build_model  # noqa: E402

PARTS = ("decode", "grad_inputs", "refinement", "final_backward")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line of the benchmark."""
    p = argparse.ArgumentParser(description="Benchmark IODINE training and inference speed.")
    p.add_argument("--config-file", default="", metavar="FILE")
    p.add_argument("--batch-size", type=int, default=0, help="default: SOLVER.IMS_PER_BATCH")
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--mode", choices=("train", "infer", "both"), default="both")
    p.add_argument("--json", default="", help="also write the results here")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs")
    return p.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    return f"{name}, {torch.get_num_threads()} threads"


class _Timers:
    """Wall-clock sums of the parts of a training step, synchronised on CUDA."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.totals = dict.fromkeys(PARTS, 0.0)

    @contextlib.contextmanager
    def part(self, name: str):
        _sync(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            _sync(self.device)
            self.totals[name] += time.perf_counter() - start


@contextlib.contextmanager
def _instrumented(model: torch.nn.Module, timers: _Timers):
    """Time the decoder, refinement network and ``autograd.grad`` calls of the model.

    The model module's ``torch`` name is swapped for a proxy whose ``autograd.grad`` is timed,
    and forward pre/post hooks time the two networks; all are removed on exit.
    """
    real_torch = iodine_module.torch
    real_grad = torch.autograd.grad

    def timed_grad(*args, **kwargs):
        with timers.part("grad_inputs"):
            return real_grad(*args, **kwargs)

    class _Autograd:
        def __getattr__(self, name):
            return timed_grad if name == "grad" else getattr(real_torch.autograd, name)

    class _Torch:
        autograd = _Autograd()

        def __getattr__(self, name):
            return getattr(real_torch, name)

    handles, starts = [], {}
    for name, module in (("decode", model.decoder), ("refinement", model.refinement)):

        def pre(mod, args, name=name):
            _sync(timers.device)
            starts[name] = time.perf_counter()

        def post(mod, args, out, name=name):
            _sync(timers.device)
            timers.totals[name] += time.perf_counter() - starts[name]

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    iodine_module.torch = _Torch()
    try:
        yield
    finally:
        iodine_module.torch = real_torch
        for h in handles:
            h.remove()


def run_benchmark(
    cfg, batch_size: int, steps: int, warmup: int, mode: str, config_name: str = ""
) -> dict:
    """Time training and inference steps of ``build_model(cfg)`` on random images.

    Args:
        cfg: a loaded config (MODEL.DEVICE, SOLVER.AMP, speed switches are honoured).
        batch_size: images per step.
        steps, warmup: timed and untimed steps.
        mode: "train", "infer" or "both".
        config_name: the config file, for the report.

    Returns:
        dict of results (images/s, step seconds, shares, FLOPs, memory, environment).
    """
    device = resolve_device(cfg.MODEL.DEVICE)
    torch.manual_seed(cfg.SEED)
    model = build_model(cfg).to(device)
    size = cfg.INPUT.IMAGE_SIZE
    images = torch.rand(batch_size, 3, size, size, device=device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.SOLVER.BASE_LR)
    amp = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if cfg.SOLVER.AMP
        else contextlib.nullcontext()
    )
    clip = cfg.SOLVER.GRAD_CLIP_NORM

    def train_step(timers: _Timers | None = None) -> None:
        opt.zero_grad(set_to_none=True)
        with amp:
            loss = model(images)["loss"]
        if timers is None:
            loss.backward()
        else:
            with timers.part("final_backward"):
                loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()

    def infer_step() -> None:
        with torch.no_grad(), amp:
            model(images)

    def timed(fn) -> list[float]:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(steps):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - start)
        return times

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    result: dict = {
        "config": config_name,
        "device": _device_name(device),
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
        "batch_size": batch_size,
        "image_size": size,
        "num_slots": cfg.MODEL.IODINE.NUM_SLOTS,
        "num_iters": cfg.MODEL.IODINE.NUM_ITERS,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    if mode in ("train", "both"):
        model.train()
        step = statistics.median(timed(train_step))
        timers = _Timers(device)
        with _instrumented(model, timers):
            _sync(device)
            start = time.perf_counter()
            train_step(timers)
            _sync(device)
            total = time.perf_counter() - start
        shares = {k: v / total for k, v in timers.totals.items()}
        shares["other"] = max(0.0, 1.0 - sum(shares.values()))
        with FlopCounterMode(display=False) as counter:
            train_step()
        flops = counter.get_total_flops()
        result.update(
            train_step_s=step,
            train_images_per_s=batch_size / step,
            train_shares=shares,
            train_gflop_per_image=flops / batch_size / 1e9,
            train_gflop_per_s=flops / step / 1e9,
        )
    if mode in ("infer", "both"):
        model.eval()
        step = statistics.median(timed(infer_step))
        # FlopCounterMode's module tracker fails on the internal enable_grad under no_grad;
        # an eval-mode forward with grad enabled does the same arithmetic.
        with FlopCounterMode(display=False) as counter, amp:
            model(images)
        flops = counter.get_total_flops()
        result.update(
            infer_step_s=step,
            infer_images_per_s=batch_size / step,
            infer_gflop_per_image=flops / batch_size / 1e9,
            infer_gflop_per_s=flops / step / 1e9,
        )
    if device.type == "cuda":
        result["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        result["peak_memory_mib"] = peak
        result["peak_rss_increase_mib"] = peak - rss_before
    return result


def format_result(r: dict) -> str:
    """A readable multi-line summary of ``run_benchmark``'s result."""
    lines = [
        f"{r['config'] or 'defaults'} | {r['device']} | torch {r['torch']} | {r['date']}",
        f"batch {r['batch_size']}, {r['image_size']}x{r['image_size']}, K={r['num_slots']}, "
        f"T={r['num_iters']}, {r['parameters']:,} parameters",
    ]
    if "train_images_per_s" in r:
        shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["train_shares"].items())
        lines.append(
            f"train: {r['train_images_per_s']:.2f} images/s ({r['train_step_s']:.3f} s/step), "
            f"{r['train_gflop_per_image']:.2f} GFLOP/image, {r['train_gflop_per_s']:.1f} GFLOP/s"
        )
        lines.append(f"  step shares: {shares}")
    if "infer_images_per_s" in r:
        lines.append(
            f"infer: {r['infer_images_per_s']:.2f} images/s, "
            f"{r['infer_gflop_per_image']:.2f} GFLOP/image, {r['infer_gflop_per_s']:.1f} GFLOP/s"
        )
    lines.append(f"peak memory: {r['peak_memory_mib']:.0f} MiB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark from the command line; returns the result dict."""
    args = parse_args(argv)
    cfg = load_cfg(args.config_file or None, args.opts)
    batch = args.batch_size or cfg.SOLVER.IMS_PER_BATCH
    result = run_benchmark(cfg, batch, args.steps, args.warmup, args.mode, args.config_file)
    print(format_result(result))
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
        os.replace(tmp, args.json)
    return result


if __name__ == "__main__":
    main()
