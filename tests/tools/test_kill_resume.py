"""SIGKILL a training process at arbitrary moments, then resume from what it left on disk."""

import os
import signal
import subprocess
import time

import pytest

from lib.engine.checkpoint import LAST_CHECKPOINT, read_checkpoint
from tests.tools.tools_helpers import PYTHON, REPO, load_tool, subprocess_env, write_config

train_net = load_tool("train_net")


def _last_iteration(out: str) -> int:
    try:
        with open(os.path.join(out, LAST_CHECKPOINT)) as f:
            return int(f.read().strip()[len("model_") : -len(".pth")])
    except (FileNotFoundError, ValueError):
        return -1


@pytest.mark.slow
def test_sigkill_then_resume(tmp_path, data_root):
    config = write_config(str(tmp_path), data_root)
    out = str(tmp_path / "run")
    # A checkpoint every iteration, so that kills often land inside a save.
    opts = ["OUTPUT_DIR", out, "SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.CHECKPOINT_KEEP", "2"]
    opts += ["TEST.EVAL_PERIOD", "0", "LOG.IMAGE_PERIOD", "0"]
    command = [PYTHON, os.path.join(REPO, "tools", "train_net.py"), "--config-file", config]
    reached = 0
    for delay in (0.0, 0.061):
        proc = subprocess.Popen(
            [*command, *opts, "SOLVER.MAX_ITER", "100000"],
            env=subprocess_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 120
        while _last_iteration(out) < reached + 3:
            assert proc.poll() is None, "training exited early"
            assert time.time() < deadline, "no checkpoints within 120 s"
            time.sleep(0.01)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # What the killed process left: a pointer to a complete, loadable checkpoint.
        reached = _last_iteration(out)
        state = read_checkpoint(os.path.join(out, f"model_{reached:07d}.pth"))
        assert state["iteration"] == reached and "optimizer" in state
        assert len([f for f in os.listdir(out) if f.endswith(".pth")]) <= 3

    # Resume in this process and train two more iterations.
    assert train_net.main([*command[2:], *opts, "SOLVER.MAX_ITER", str(reached + 2)]) == 0
    assert (
        f"resumed from {os.path.join(out, f'model_{reached:07d}.pth')}"
        in open(os.path.join(out, "log.txt")).read()
    )
    assert _last_iteration(out) == reached + 2
    assert not [f for f in os.listdir(out) if ".tmp." in f]
