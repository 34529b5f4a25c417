"""Logging to the console and ``OUTPUT_DIR/log.txt``, and a description of the environment."""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys

import numpy as np
import torch
from tqdm import tqdm

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_DATE = "%Y-%m-%d %H:%M:%S"


class _TqdmHandler(logging.StreamHandler):
    """Console handler that prints through tqdm, so log lines do not break the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # noqa: BLE001 - logging's own convention: report, do not raise
            self.handleError(record)


def setup_logger(
    name: str,
    save_dir: str | None,
    rank: int = 0,
    filename: str = "log.txt",
    packages: tuple[str, ...] = ("lib",),
) -> logging.Logger:
    """Configure logger ``name``: INFO to stdout and to ``save_dir/filename`` (appended to,
    DEBUG records too: tracebacks) on rank 0, WARNING only elsewhere.

    The loggers of ``packages`` (module loggers such as ``lib.prepare.missing``) get the same
    handlers at INFO level. Calling it again replaces (and closes) the handlers a previous
    call installed, so a process may set up several runs in turn (as the tests do).
    """
    loggers = [logging.getLogger(n) for n in (name, *packages)]
    for each in loggers:
        close_logger(each, packages=())
        each.setLevel(logging.INFO)
        each.propagate = False
    logger = loggers[0]
    logger.setLevel(logging.DEBUG)
    formatter = logging.Formatter(_FORMAT, datefmt=_DATE)

    console = _TqdmHandler(stream=sys.stdout)
    console.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    console.setFormatter(formatter if rank == 0 else logging.Formatter(f"[rank {rank}] {_FORMAT}"))
    handlers: list[logging.Handler] = [console]
    if save_dir and rank == 0:
        os.makedirs(save_dir, exist_ok=True)
        file_handler = logging.FileHandler(os.path.join(save_dir, filename), encoding="utf-8")
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(formatter)
        handlers.append(file_handler)
    for each in loggers:
        for handler in handlers:
            each.addHandler(handler)
    return logger


def close_logger(logger: logging.Logger, packages: tuple[str, ...] = ("lib",)) -> None:
    """Flush and remove every handler of ``logger`` and of the ``packages`` loggers (closes
    log.txt), and give them back their default level and propagation, so that a later run
    or test in the same process starts from logging's defaults."""
    for each in (logger, *(logging.getLogger(n) for n in packages)):
        for handler in list(each.handlers):
            each.removeHandler(handler)
            handler.close()
        each.setLevel(logging.NOTSET)
        each.propagate = True


def git_description(repo_dir: str | None = None) -> str:
    """Commit of the source tree at ``repo_dir`` (default: this package), e.g.
    ``"3f2a9c1... (dirty)"`` with uncommitted changes, or ``"unknown (<why>)"``."""
    repo_dir = repo_dir or os.path.dirname(os.path.abspath(__file__))

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["git", *args], cwd=repo_dir, capture_output=True, text=True, timeout=10
        )

    try:
        commit = git("rev-parse", "HEAD")
        if commit.returncode != 0:
            return "unknown (" + (commit.stderr.strip().splitlines() or ["git failed"])[-1] + ")"
        dirty = (
            " (dirty)"
            if git("status", "--porcelain", "--untracked-files=no").stdout.strip()
            else ""
        )
        return commit.stdout.strip() + dirty
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"


def environment_info(device: torch.device) -> str:
    """Lines ``key: value`` for log.txt: git commit, Python, PyTorch, NumPy, CUDA, device."""
    lines = [
        f"git commit: {git_description()}",
        f"python: {sys.version.split()[0]} ({platform.platform()})",
        f"torch: {torch.__version__}",
        f"numpy: {np.__version__}",
        f"cuda available: {torch.cuda.is_available()} (torch built with CUDA {torch.version.cuda})",
        f"device: {device}",
    ]
    if device.type == "cuda":
        lines.append(f"gpu: {torch.cuda.get_device_name(device)}")
    return "\n".join(lines)
