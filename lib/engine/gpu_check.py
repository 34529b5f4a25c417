"""The GPU check's parts (``tools/gpu_check.py`` is its command line): the benchmark of the
paper configs and a short real training on the generated Multi-dSprites stand-in, both
written to one JSON as they go, and the table printed at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import torch
from yacs.config import CfgNode

from lib.analysis import profiling
from lib.config import load_cfg
from lib.data import make_data_loader, make_dataset
from lib.engine.benchmark import run_benchmark
from lib.engine.hooks import PeriodicStats, TimedEvaluation, TimeLimit
from lib.engine.inference import do_evaluate
from lib.engine.precision import PrecisionError, autocast_factory
from lib.engine.setup import RunError, resolve_device, seed_all, setup_precision
from lib.engine.solver import make_lr_scheduler, make_optimizer
from lib.engine.trainer import Trainer, make_heldout_batches
from lib.model import build_model
from lib.prepare import prepare_missing
from lib.utils.io import atomic_write_text

CONFIG_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs"
)
PAPER_CONFIGS = ("clevr6_prop", "multi_dsprites", "tetrominoes")


def _cfg(name: str, device: str, opts: Sequence[str], extra: Sequence[str] = ()) -> CfgNode:
    path = os.path.join(CONFIG_DIR, f"{name}.yaml")
    return load_cfg(path, ["MODEL.DEVICE", device, *opts, *extra])


def write_result(path: str, result: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")


def benchmark_all(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """Step 1: fill ``result["benchmarks"]`` (eager entries first, then compiled)."""
    deadline = time.perf_counter() + 60 * args.bench_minutes
    entries = [
        (name, precision, comp)
        for comp in args.compile
        for name in args.configs
        for precision in args.precisions
    ]
    for name, precision, comp in entries:
        entry: dict[str, Any] = {"config": name, "precision": precision, "compile": comp}
        result["benchmarks"].append(entry)
        if time.perf_counter() > deadline:
            entry["skipped"] = f"--bench-minutes {args.bench_minutes} used up"
            continue
        start = time.perf_counter()
        print(f"benchmark {name} {precision} compile {comp}", file=sys.stderr, flush=True)
        # Each entry compiles afresh: one process would otherwise pile every config's and
        # precision's graphs onto the same functions and hit dynamo's recompile limit,
        # silently running the later "compiled" entries eagerly.
        torch._dynamo.reset()
        try:
            cfg = _cfg(
                name,
                args.device,
                args.opts,
                ["MODEL.PRECISION", precision, "MODEL.COMPILE", str(comp == "on")],
            )
            bench = run_benchmark(cfg, steps=args.steps, warmup=args.warmup, profile_steps=1)
            for mode in ("train", "infer"):
                entry[mode] = {
                    "images_per_s": bench[mode]["images_per_s"],
                    "step_time_median_s": bench[mode]["step_time_s"]["median"],
                    "peak_memory_bytes": bench[mode]["peak_memory_bytes"],
                    "shares": bench[mode]["shares"],
                }
            entry["batch_size"] = bench["setup"]["batch_size"]
            entry["precision_settings"] = bench["setup"]["precision"]
        except RunError as exc:
            if not isinstance(exc.__cause__, PrecisionError):
                raise
            # Not a failure: this device cannot run the precision (bf16 without support).
            entry["refused"] = str(exc)
            print(f"  refused: {entry['refused']}", file=sys.stderr, flush=True)
        except Exception as exc:  # recorded in the JSON and printed: the check goes on
            entry["error"] = f"{type(exc).__name__}: {exc}"
            print(f"  failed: {entry['error'][:500]}", file=sys.stderr, flush=True)
        entry["seconds"] = round(time.perf_counter() - start, 1)
        if args.device == "cuda":
            torch.cuda.empty_cache()
        write_result(args.out, result)


def train_multi_dsprites(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """Step 2: generate multi_dsprites_synth, train for --minutes, held-out fg-ARI over time."""
    root = args.data_root or tempfile.mkdtemp(prefix="iodine_gpu_check_")
    cfg = _cfg(
        "multi_dsprites",
        args.device,
        args.opts,
        [
            "DATASETS.ROOT",
            root,
            # The generated stand-in (the official data is not downloaded here).
            "DATASETS.TRAIN",
            "multi_dsprites_synth_train",
            "DATASETS.TEST",
            "multi_dsprites_synth_test",
            "DATASETS.GENERATE_SIZE",
            str(args.generate_size),
            "MODEL.PRECISION",
            args.train_precision,
            "DATALOADER.NUM_WORKERS",
            str(min(4, os.cpu_count() or 1)),
        ],
    )
    run: dict[str, Any] = {"data_root": root, "precision": args.train_precision, "evals": []}
    result["training"] = run
    start = time.perf_counter()
    names = [*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST]
    prepare_missing(cfg, names)
    datasets = {name: make_dataset(name, cfg, False) for name in names}
    run["prepare_seconds"] = round(time.perf_counter() - start, 1)
    run["sizes"] = {name: len(ds) for name, ds in datasets.items()}
    write_result(args.out, result)

    device = resolve_device(cfg.MODEL.DEVICE)
    run["precision_settings"] = setup_precision(cfg, device)
    autocast = autocast_factory(run["precision_settings"]["precision"], device)
    seed_all(cfg.SEED)
    model = build_model(cfg).to(device)
    optimizer = make_optimizer(cfg, model)
    clip = cfg.SOLVER.GRAD_CLIP_NORM if cfg.SOLVER.GRAD_CLIP_NORM > 0 else math.inf
    test_name = cfg.DATASETS.TEST[0]
    heldout = make_heldout_batches(datasets[test_name], len(datasets[test_name]), 64)

    def evaluate(trainer: Trainer) -> None:
        metrics = do_evaluate(trainer.model, [(test_name, heldout)], device)[test_name]
        point = {
            "iteration": trainer.iter,
            "train_seconds": round(trainer.train_seconds, 1),
            "train_images": trainer.iter * cfg.SOLVER.IMS_PER_BATCH,
            **{key: metrics[key] for key in ("fg_ari", "ari", "mse", "num_images")},
        }
        run["evals"].append(point)
        print(f"  train {point}", file=sys.stderr, flush=True)
        write_result(args.out, result)

    # The training loop of train_net, stopped by time; skipped steps are undone as there.
    stats = PeriodicStats(20, 0, cfg.SOLVER.MAX_NONFINITE)
    hooks = [
        stats,
        TimeLimit(60 * args.minutes, device, profiling.synchronize),
        TimedEvaluation(args.eval_seconds, evaluate),
    ]
    trainer = Trainer(
        model, optimizer, make_data_loader(cfg, is_train=True), make_lr_scheduler(cfg, optimizer),
        device, 0, 10**9, hooks, cfg.SOLVER.ACCUMULATE_STEPS, clip, autocast,
    )  # fmt: skip
    trainer.train()
    run["iterations"] = trainer.iter
    run["skipped_steps"] = stats.skipped_steps
    images = trainer.iter * cfg.SOLVER.IMS_PER_BATCH
    run["train_images_per_s"] = images / trainer.train_seconds if trainer.train_seconds else 0.0


def format_table(result: dict[str, Any]) -> str:
    """The check as text: one line per benchmark entry, then the ARI curve."""
    lines = [
        f"IODINE GPU check  {result['env']['date']}  {result['env']['device_name']}  "
        f"torch {result['env']['torch']}",
        f"{'config':<16}{'prec':<6}{'compile':<8}{'train img/s':>12}{'train MiB':>10}"
        f"{'infer img/s':>12}{'infer MiB':>10}  note",
    ]
    for e in result["benchmarks"]:
        head = f"{e['config']:<16}{e['precision']:<6}{e['compile']:<8}"
        if "train" in e:
            t, i = e["train"], e["infer"]
            lines.append(
                head + f"{t['images_per_s']:>12.1f}{t['peak_memory_bytes'] / 2**20:>10.0f}"
                f"{i['images_per_s']:>12.1f}{i['peak_memory_bytes'] / 2**20:>10.0f}"
            )
        else:
            note = e.get("error") or e.get("skipped") or e.get("refused") or ""
            lines.append(head + f"{'-':>12}{'-':>10}{'-':>12}{'-':>10}  {note[:80]}")
    run = result.get("training")
    if run:
        lines += ["", f"multi_dsprites training ({run['precision']}): held-out fg-ARI"]
        for p in run.get("evals", []):
            fg = "n/a" if p["fg_ari"] is None else f"{100 * p['fg_ari']:.1f}"
            lines.append(f"  {p['train_seconds']:>7.1f} s  iter {p['iteration']:>6}  fg_ari {fg}")
        if "error" in run:
            lines.append(f"  failed: {run['error'][:200]}")
    return "\n".join(lines)
