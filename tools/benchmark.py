"""Measure IODINE's speed: images/s, peak memory, FLOPs, and with --profile the top operators.

    python tools/benchmark.py --config-file configs/tetrominoes.yaml [--configs B.yaml ...]
        [--batch-size B] [--steps N] [--warmup W] [--mode train|infer|both]
        [--profile-steps P] [--threads N] [--json OUT.json] [--device auto|cpu|cuda]
        [--precision fp32|tf32|bf16 ...] [--compile on|off] [--profile] [KEY VALUE ...]

Random uniform images in [0, 1] at INPUT.IMAGE_SIZE (no dataset), batch SOLVER.IMS_PER_BATCH
unless --batch-size, device MODEL.DEVICE. ``KEY VALUE`` pairs anywhere on the line override
every config, so any shape or speed switch can be measured (MODEL.CHANNELS_LAST,
MODEL.COMPILE, MODEL.DECODER.FACTORIZED_FIRST_LAYER), e.g. the earlier port's shape:

    python tools/benchmark.py INPUT.IMAGE_SIZE 32 MODEL.IODINE.NUM_SLOTS 4 \\
        MODEL.DECODER.CONV_CHANNELS "(32,32,32,32)" --batch-size 16

Every config (``--config-file``, then ``--configs``) runs at every ``--precision``; ``--json``
gets them all as ``{"runs": [...]}``. A whole GPU check is one command:

    python tools/benchmark.py --config-file configs/clevr6_prop.yaml \\
        --configs configs/multi_dsprites.yaml configs/tetrominoes.yaml \\
        --precision fp32 tf32 bf16 --batch-size 32 --profile --json gpu.json

What each number measures: ``lib/engine/benchmark.py``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from typing import Any

import torch
from yacs.config import CfgNode

from lib import spec
from lib.cli import default_argument_parser, run_tool
from lib.engine.benchmark import format_report, run_benchmark
from lib.engine.precision import PrecisionError
from lib.errors import ConfigError, RunError
from lib.utils.io import atomic_write_text


def build_parser() -> argparse.ArgumentParser:
    """The command line: the shared ``--config-file`` and overrides, plus the options below."""
    parser = default_argument_parser("Benchmark IODINE (images/s, memory, FLOPs).")
    parser.epilog = (
        "KEY VALUE pairs anywhere on the line override the config, e.g. "
        'INPUT.IMAGE_SIZE 32 MODEL.DECODER.CONV_CHANNELS "(32,32,32,32)".'
    )
    parser.add_argument(
        "--batch-size", type=int, default=0, help="images per step (0: SOLVER.IMS_PER_BATCH)"
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first, per mode")
    parser.add_argument(
        "--profile-steps",
        type=int,
        default=0,
        help="steps profiled with --profile (0: min(steps, 3))",
    )
    parser.add_argument("--mode", choices=("train", "infer", "both"), default="both")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (0: leave as is)"
    )
    parser.add_argument("--json", default="", metavar="OUT.json", help="also write the results")
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default=None, help="MODEL.DEVICE"
    )
    parser.add_argument(
        "--precision",
        nargs="+",
        choices=spec.PRECISIONS,
        default=None,
        help="MODEL.PRECISION; several values run each in turn",
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        default=[],
        metavar="FILE",
        help="more YAML config files, run after --config-file",
    )
    parser.add_argument(
        "--compile", choices=("on", "off"), default=None, help="MODEL.COMPILE (torch.compile)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile --profile-steps steps per mode with torch.profiler: the top "
        "operators and the decoder and refinement ranges",
    )
    return parser


def benchmark_cfg(
    args: argparse.Namespace, config_file: str | None = None, precision: str | None = None
) -> CfgNode:
    """One run's config: the file, then the overrides, then --device/--precision/--compile.

    Args:
        args: the parsed command line.
        config_file: the YAML file (None: ``--config-file``; "": the defaults).
        precision: MODEL.PRECISION (None: the first ``--precision``, or the config's).
    """
    from lib.config import load_cfg

    opts = list(args.opts)
    if args.device is not None:
        opts += ["MODEL.DEVICE", args.device]
    precision = precision or (args.precision[0] if args.precision else None)
    if precision is not None:
        opts += ["MODEL.PRECISION", precision]
    if args.compile is not None:
        opts += ["MODEL.COMPILE", str(args.compile == "on")]
    config_file = args.config_file if config_file is None else config_file
    return load_cfg(config_file or None, opts)


def _one_run(cfg: CfgNode, args: argparse.Namespace) -> dict[str, Any]:
    """``run_benchmark`` of ``cfg`` as the command line asks; a refused precision is
    ``{"refused": message}``."""
    try:
        return run_benchmark(
            cfg,
            batch_size=args.batch_size,
            steps=args.steps,
            warmup=args.warmup,
            mode=args.mode,
            profile_steps=args.profile_steps,
            log=lambda msg: print(msg, file=sys.stderr, flush=True),
            profile=args.profile,
        )
    except RunError as exc:
        if not isinstance(exc.__cause__, PrecisionError):
            raise
        # This machine cannot run the precision: a result too, recorded with the others.
        return {"refused": str(exc)}


def benchmark(cfg: CfgNode, args: argparse.Namespace) -> dict[str, Any]:
    """Run every config at every precision, print the tables, write the JSON.

    Args:
        cfg: the first run's config (``benchmark_cfg(args)``, loaded by ``run_tool``).
        args: the parsed command line (``args.argv``: the arguments as given).

    Returns:
        ``{"runs": [...], "command": ...}``: per config and precision, ``run_benchmark``'s
        result (or ``{"refused": message}``) with ``config_file``, ``precision`` and
        ``overrides``.

    Raises:
        ConfigError: a ``--configs`` file cannot be loaded.
        RunError: a precision was refused (after the JSON is written), or another run error.
    """
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    files = [args.config_file, *args.configs]
    precisions = args.precision or [None]  # None: each config's own MODEL.PRECISION
    # Every config loaded before any run: a bad file fails in seconds, not after the others.
    try:
        cfgs = [
            (f, p, cfg if i == 0 and j == 0 else benchmark_cfg(args, f, p))
            for i, f in enumerate(files)
            for j, p in enumerate(precisions)
        ]
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc
    runs = []
    for config_file, _, run_cfg in cfgs:
        run = _one_run(run_cfg, args)
        run.update(
            config_file=config_file,
            precision=run_cfg.MODEL.PRECISION,
            device=run_cfg.MODEL.DEVICE,
            overrides=list(args.opts),
        )
        if "refused" not in run:
            print(format_report(run))
        runs.append(run)
    result = {"runs": runs, "command": shlex.join(["python", "tools/benchmark.py", *args.argv])}
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    refused = [r["refused"] for r in runs if "refused" in r]
    if refused:
        raise RunError(refused[0])  # the one line run_tool prints; the others are in the JSON
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point.

    Args:
        argv: arguments without the program name (None: ``sys.argv[1:]``).

    Returns:
        The exit status: 0, or 1 with a one-line message on a config, device or argument error
        or a precision this machine refuses (recorded in ``--json`` as ``refused``).
    """
    return run_tool(argv, build_parser(), benchmark, make_cfg=benchmark_cfg)


if __name__ == "__main__":
    sys.exit(main())
