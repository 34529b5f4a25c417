"""Measure IODINE's speed: images/s, peak memory, FLOPs, and with --profile the top operators.

    python tools/benchmark.py --config-file CFG [--configs CFG2 ...] [--precision P ...]
        [--json OUT.json] [options] [KEY VALUE ...]

Every config (``--config-file``, then ``--configs``) runs at every ``--precision``, with the
``KEY VALUE`` overrides; ``--json`` gets them all as ``{"runs": [...]}``. The options and
measurements: ``tools/README.md``; what each number measures: ``lib/engine/benchmark.py``.
"""

from __future__ import annotations

import argparse
import functools
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
    add = parser.add_argument
    add("--configs", nargs="+", default=[], metavar="FILE", help="run after --config-file")
    add("--precision", nargs="+", choices=spec.PRECISIONS, help="MODEL.PRECISION, each in turn")
    add("--batch-size", type=int, default=0, help="images per step (0: SOLVER.IMS_PER_BATCH)")
    add("--steps", type=int, default=10, help="timed steps per mode")
    add("--warmup", type=int, default=2, help="untimed steps first, per mode")
    add("--mode", choices=("train", "infer", "both"), default="both")
    add("--profile", action="store_true", help="also list torch.profiler's top operators")
    add("--profile-steps", type=int, default=0, help="steps profiled (0: min(steps, 3))")
    add("--threads", type=int, default=0, help="torch intra-op threads (0: leave as is)")
    add("--device", choices=("auto", "cpu", "cuda"), help="MODEL.DEVICE")
    add("--compile", choices=("on", "off"), help="MODEL.COMPILE (torch.compile)")
    add("--json", default="", metavar="OUT.json", help="also write the results")
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


def benchmark(cfg: CfgNode, args: argparse.Namespace) -> dict[str, Any]:
    """Run every config at every precision, print the tables, write the JSON.

    Args:
        cfg: the first run's config (unused: every config is loaded again here).
        args: the parsed command line (``args.argv``: the arguments as given).

    Returns:
        ``{"runs": [...], "command": ...}``: per config and precision, ``run_benchmark``'s
        result or ``{"refused": message}``, with ``config_file``, ``precision``, ``device``
        and ``overrides``.

    Raises:
        ConfigError: a ``--configs`` file cannot be loaded.
        RunError: a precision was refused (after the JSON is written), or another run error.
    """
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    # Every config loaded before any run: a bad file fails in seconds, not after the others.
    try:
        cfgs = [
            (file, benchmark_cfg(args, file, precision))
            for file in [args.config_file, *args.configs]
            for precision in args.precision or [None]  # None: the config's own
        ]
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc
    log = functools.partial(print, file=sys.stderr, flush=True)
    names = ("batch_size", "steps", "warmup", "mode", "profile_steps", "profile")
    runs = []
    for config_file, run_cfg in cfgs:
        try:
            run = run_benchmark(run_cfg, log=log, **{name: getattr(args, name) for name in names})
            print(format_report(run))
        except RunError as exc:
            if not isinstance(exc.__cause__, PrecisionError):
                raise
            run = {"refused": str(exc)}  # a result too, recorded with the others
        run.update(
            config_file=config_file,
            precision=run_cfg.MODEL.PRECISION,
            device=run_cfg.MODEL.DEVICE,
            overrides=list(args.opts),
        )
        runs.append(run)
    result = {"runs": runs, "command": shlex.join(["python", "tools/benchmark.py", *args.argv])}
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    refused = [r["refused"] for r in runs if "refused" in r]
    if refused:
        raise RunError(refused[0])  # the one line run_tool prints; the others are in the JSON
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: the exit status, 0, or 1 with one line on a config, device or argument
    error or a precision this machine refuses (recorded in ``--json`` as ``refused``)."""
    return run_tool(argv, build_parser(), benchmark, make_cfg=benchmark_cfg)


if __name__ == "__main__":
    sys.exit(main())
