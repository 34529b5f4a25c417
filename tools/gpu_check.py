"""One-command GPU check: speed and memory of the paper configs, then a short real training.

    python tools/gpu_check.py --out gpu_check.json [--minutes 3] [--device cuda]
        [--configs clevr6_prop multi_dsprites tetrominoes] [--precisions fp32 tf32 bf16]
        [--compile off on] [--bench-minutes 4] [--steps 3] [--warmup 2]
        [--data-root DIR] [--generate-size 3000] [KEY VALUE ...]

1. For each paper config, precision and compile switch: ``run_benchmark`` (random images,
   the config's batch): train and inference images/s and peak memory. A failing entry (e.g.
   ``torch.compile`` unavailable) records its error string, a precision the device cannot
   run (bf16 without support) is recorded as ``refused``, and the check goes on. Entries
   that would start after --bench-minutes are recorded as skipped (eager ones run first).
2. Generates ``multi_dsprites_synth`` (--generate-size training images, DATASETS.TEST_SIZE test
   images) with ``lib.prepare`` under --data-root, trains it for --minutes in fp32 and
   measures the held-out foreground ARI (``do_evaluate`` on the test images) every
   --eval-seconds.

Everything goes to one JSON (rewritten atomically after each entry, so an interrupted check
keeps what it measured) and a table is printed. ``KEY VALUE`` pairs override every config.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

from lib.analysis import profiling
from lib.cli import default_argument_parser, parse_tool_args
from lib.engine.gpu_check import (
    PAPER_CONFIGS,
    benchmark_all,
    format_table,
    train_multi_dsprites,
    write_result,
)


def build_parser() -> argparse.ArgumentParser:
    """The command line (``--config-file`` is not used: the configs are the paper ones)."""
    parser = default_argument_parser("One-command GPU check of IODINE (speed, memory, ARI).")
    parser.add_argument("--out", required=True, metavar="FILE.json", help="results JSON")
    parser.add_argument("--minutes", type=float, default=3.0, help="training time of step 2")
    parser.add_argument("--bench-minutes", type=float, default=4.0, help="budget of step 1")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--configs", nargs="+", default=list(PAPER_CONFIGS))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "tf32", "bf16"])
    parser.add_argument("--compile", nargs="+", choices=("off", "on"), default=["off", "on"])
    parser.add_argument("--steps", type=int, default=3, help="timed benchmark steps per mode")
    parser.add_argument("--warmup", type=int, default=2, help="untimed benchmark steps first")
    parser.add_argument("--eval-seconds", type=float, default=30.0, help="time between ARIs")
    parser.add_argument("--data-root", default="", help="where multi_dsprites is generated")
    parser.add_argument("--generate-size", type=int, default=3000, help="training images")
    parser.add_argument("--train-precision", choices=("fp32", "tf32", "bf16"), default="fp32")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point.

    Args:
        argv: arguments without the program name (None: ``sys.argv[1:]``).

    Returns:
        0 when every part ran (benchmark errors are recorded, not fatal), 1 when the
        training part failed (its error is in the JSON) or the arguments are bad.
    """
    args = parse_tool_args(build_parser(), sys.argv[1:] if argv is None else argv)
    unknown = sorted(set(args.configs) - set(PAPER_CONFIGS))
    if unknown:
        print(f"error: unknown --configs {unknown}; known: {list(PAPER_CONFIGS)}", file=sys.stderr)
        return 1
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is available", file=sys.stderr)
        return 1
    device = torch.device(args.device)
    result: dict[str, Any] = {
        "env": {
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "device": args.device,
            "device_name": profiling.device_name(device),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
        },
        "command": ["python", "tools/gpu_check.py", *(sys.argv[1:] if argv is None else argv)],
        "benchmarks": [],
    }
    start = time.perf_counter()
    benchmark_all(args, result)
    status = 0
    try:
        train_multi_dsprites(args, result)
    except Exception as exc:  # recorded in the JSON; the exit status says it failed
        result.setdefault("training", {})["error"] = f"{type(exc).__name__}: {exc}"
        status = 1
    result["total_seconds"] = round(time.perf_counter() - start, 1)
    write_result(args.out, result)
    print(format_table(result))
    return status


if __name__ == "__main__":
    sys.exit(main())
