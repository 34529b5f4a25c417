"""SIGKILL, SIGTERM and SIGINT a training process, then resume from what it left on disk;
a second run in the same OUTPUT_DIR is refused while the first one lives."""

import os
import signal
import subprocess
import time

import pytest
import torch

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


def _start(command, *opts, stderr=subprocess.PIPE):
    return subprocess.Popen(
        [*command, *opts], env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=stderr,
        text=True,
    )  # fmt: skip


def _wait_for(proc, path, text, timeout=120):
    deadline = time.time() + timeout
    while not (os.path.exists(path) and text in open(path).read()):
        assert proc.poll() is None, "training exited early"
        assert time.time() < deadline, f"no {text!r} in {path} within {timeout} s"
        time.sleep(0.02)


@pytest.mark.slow
def test_sigterm_and_sigint_save_and_resume_exactly(tmp_path, data_root, capsys):
    config = write_config(str(tmp_path), data_root)
    out = str(tmp_path / "run")
    # Checkpoints only at the end: the stops write their own.
    opts = ["OUTPUT_DIR", out, "SOLVER.CHECKPOINT_PERIOD", "1000", "SOLVER.MAX_ITER", "30"]
    opts += ["TEST.EVAL_PERIOD", "0", "LOG.IMAGE_PERIOD", "0"]
    command = [PYTHON, os.path.join(REPO, "tools", "train_net.py"), "--config-file", config]
    log = os.path.join(out, "log.txt")
    stops = []
    for signum, after in ((signal.SIGTERM, 3), (signal.SIGINT, 6)):
        proc = _start(command, *opts)
        _wait_for(proc, log, f"iter {after}/30")
        proc.send_signal(signum)
        stderr = proc.communicate(timeout=120)[1]
        assert proc.returncode == 128 + signum, stderr
        reached = _last_iteration(out)
        assert (
            after <= reached < 30
            and read_checkpoint(os.path.join(out, f"model_{reached:07d}.pth"))["iteration"]
            == reached
        )
        name = signal.Signals(signum).name
        line = f"{name}: stopped at iteration {reached} with checkpoint model_{reached:07d}.pth"
        assert stderr.strip().splitlines()[-1].startswith(f"error: {line}"), stderr
        assert "Traceback" not in stderr and line in open(log).read()
        stops.append(reached)
    assert stops[0] < stops[1]
    # The same command finishes the run with the weights of an uninterrupted one.
    assert train_net.main([*command[2:], *opts]) == 0
    straight = str(tmp_path / "straight")
    assert train_net.main([*command[2:], *opts, "OUTPUT_DIR", straight]) == 0
    resumed = read_checkpoint(os.path.join(out, "model_0000030.pth"))["model"]
    direct = read_checkpoint(os.path.join(straight, "model_0000030.pth"))["model"]
    for key in direct:
        assert torch.allclose(resumed[key], direct[key], atol=1e-6), key


@pytest.mark.slow
def test_one_run_per_output_dir(tmp_path, data_root, capsys):
    config = write_config(str(tmp_path), data_root)
    out = str(tmp_path / "run")
    opts = ["OUTPUT_DIR", out, "SOLVER.CHECKPOINT_PERIOD", "1", "TEST.EVAL_PERIOD", "0"]
    opts += ["LOG.IMAGE_PERIOD", "0"]
    command = [PYTHON, os.path.join(REPO, "tools", "train_net.py"), "--config-file", config]
    proc = _start(command, *opts, "SOLVER.MAX_ITER", "100000", stderr=subprocess.DEVNULL)
    _wait_for(proc, os.path.join(out, LAST_CHECKPOINT), "model_")
    before = {name: open(os.path.join(out, name)).read() for name in ("config.yaml", "log.txt")}
    capsys.readouterr()
    # (MAX_ITER 1: without the lock, it would resume past its end and stop at once.)
    second = [*command[2:], *opts, "SOLVER.MAX_ITER", "1", "SOLVER.BASE_LR", "0.0005"]
    assert train_net.main(second) == 1
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1 and f"OUTPUT_DIR {out} is in use" in err and f"pid {proc.pid}" in err
    )
    # The second run wrote nothing: config.yaml is the first run's, its log has no second run.
    assert open(os.path.join(out, "config.yaml")).read() == before["config.yaml"]
    assert "0.0005" not in open(os.path.join(out, "log.txt")).read()[len(before["log.txt"]) :]
    # A killed holder blocks nobody: the next run resumes at once.
    proc.kill()
    proc.wait()
    reached = _last_iteration(out)
    assert train_net.main([*command[2:], *opts, "SOLVER.MAX_ITER", str(reached + 1)]) == 0
    assert _last_iteration(out) == reached + 1


def test_a_resume_falls_back_from_a_truncated_checkpoint(tmp_path, data_root):
    config = write_config(str(tmp_path), data_root)
    out = str(tmp_path / "run")
    argv = ["--config-file", config, "OUTPUT_DIR", out, "TEST.EVAL_PERIOD", "0"]
    argv += ["LOG.IMAGE_PERIOD", "0"]
    assert train_net.main([*argv, "SOLVER.MAX_ITER", "4"]) == 0
    newest, older = (os.path.join(out, f"model_000000{i}.pth") for i in (4, 2))
    with open(newest, "r+b") as f:
        f.truncate(os.path.getsize(newest) // 2)
    assert train_net.main([*argv, "SOLVER.MAX_ITER", "5"]) == 0
    log = open(os.path.join(out, "log.txt")).read()
    assert f"cannot read checkpoint {newest}" in log and f"resuming from {older}" in log
    assert f"resumed from {older} at iteration 2" in log
    assert read_checkpoint(os.path.join(out, "model_0000005.pth"))["iteration"] == 5
