"""Measure IODINE's speed: images/s, peak memory, time shares and FLOPs of a step.

    python tools/benchmark.py --config-file configs/tetrominoes.yaml [--batch-size B]
        [--steps N] [--warmup W] [--mode train|infer|both] [--profile-steps P]
        [--threads N] [--json OUT.json] [--device cpu|cuda] [--precision fp32|tf32|bf16]
        [--compile on|off] [--profile] [KEY VALUE ...]

Random uniform images in [0, 1] at INPUT.IMAGE_SIZE (no dataset), batch SOLVER.IMS_PER_BATCH
unless --batch-size, device MODEL.DEVICE. ``KEY VALUE`` pairs anywhere on the line override
the config, so any shape or speed switch can be measured (MODEL.CHANNELS_LAST, MODEL.COMPILE,
MODEL.PRECISION, MODEL.DECODER.FACTORIZED_FIRST_LAYER), e.g. the earlier port's shape:

    python tools/benchmark.py INPUT.IMAGE_SIZE 32 MODEL.IODINE.NUM_SLOTS 4 \\
        MODEL.DECODER.CONV_CHANNELS "(32,32,32,32)" --batch-size 16

``--profile`` adds a ``torch.profiler`` run per mode: the step's wall time split into
convolution kernels, other kernels and idle (launch gaps), kernels per step, and the counted
FLOP rate as a fraction of the GPU's peak at the precision (``lib/analysis/kernel_profile.py``).

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

from lib.cli import default_argument_parser, run_tool
from lib.engine.benchmark import format_report, run_benchmark
from lib.engine.precision import PrecisionError
from lib.errors import RunError
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
        help="instrumented steps for the time shares (0: min(steps, 3))",
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
        "--precision", choices=("fp32", "tf32", "bf16"), default=None, help="MODEL.PRECISION"
    )
    parser.add_argument(
        "--compile", choices=("on", "off"), default=None, help="MODEL.COMPILE (torch.compile)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile --profile-steps steps with torch.profiler: conv / other / idle "
        "shares, kernels per step, fraction of the peak FLOP rate",
    )
    return parser


def benchmark_cfg(args: argparse.Namespace) -> CfgNode:
    """The config: ``--config-file``, then the overrides, then --device/--precision/--compile."""
    from lib.config import load_cfg

    opts = list(args.opts)
    if args.device is not None:
        opts += ["MODEL.DEVICE", args.device]
    if args.precision is not None:
        opts += ["MODEL.PRECISION", args.precision]
    if args.compile is not None:
        opts += ["MODEL.COMPILE", str(args.compile == "on")]
    return load_cfg(args.config_file or None, opts)


def benchmark(cfg: CfgNode, args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark the command line asks for, print the table, write the JSON.

    Args:
        cfg: the config.
        args: the parsed command line (``args.argv``: the arguments as given).

    Returns:
        ``run_benchmark``'s result plus ``config_file``, ``overrides`` and ``command``.
    """
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    command = shlex.join(["python", "tools/benchmark.py", *args.argv])
    try:
        result = run_benchmark(
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
        if args.json and isinstance(exc.__cause__, PrecisionError):
            # A refusal is a result too (this machine cannot run the precision): record it.
            refused = {
                "refused": str(exc),
                "precision": cfg.MODEL.PRECISION,
                "device": cfg.MODEL.DEVICE,
                "command": command,
            }
            atomic_write_text(args.json, json.dumps(refused, indent=2) + "\n")
        raise
    result["config_file"] = args.config_file
    result["overrides"] = list(args.opts)
    result["command"] = command
    print(format_report(result))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point.

    Args:
        argv: arguments without the program name (None: ``sys.argv[1:]``).

    Returns:
        The exit status: 0, or 1 with a one-line message on a config, device or argument error
        (a precision this machine refuses is also written to ``--json`` as ``refused``).
    """
    return run_tool(argv, build_parser(), benchmark, make_cfg=benchmark_cfg)


if __name__ == "__main__":
    sys.exit(main())
