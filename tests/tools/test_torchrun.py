"""Two CPU processes on gloo: train under torchrun, resume and evaluate (evaluation matches
one process). The resume and evaluation run the tools' main() in two forked processes with
torchrun's environment variables, which saves two interpreter start-ups on a slow machine."""

import json
import os
import signal
import socket
import subprocess
import threading
import time

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from tests.tools.tools_helpers import (
    PYTHON,
    REPO,
    join_or_kill,
    load_tool,
    subprocess_env,
    write_config,
)

train_net = load_tool("train_net")
test_net = load_tool("test_net")


def _torchrun(tool: str, *args: str) -> subprocess.CompletedProcess:
    command = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += [os.path.join(REPO, "tools", f"{tool}.py"), *args]
    result = subprocess.run(
        command, env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _signal_when(path, text, signum):
    # A thread of one rank: that rank alone gets ``signum`` once ``text`` is in ``path``.
    while not (os.path.exists(path) and text in open(path).read()):
        time.sleep(0.02)
    os.kill(os.getpid(), signum)


def _rank_main(rank, port, tool, argv, queue, signal_rank1=None):
    os.environ.update(
        WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    if rank == 1 and signal_rank1 is not None:
        threading.Thread(target=_signal_when, args=signal_rank1, daemon=True).start()
    queue.put((rank, tool.main(argv)))


def _two_ranks(tool, argv, signal_rank1=None, status=0) -> None:
    """Run ``tool.main(argv)`` as ranks 0 and 1 of a gloo group (forked, else spawned);
    ``signal_rank1``: (file, text, signal) sent to rank 1 once the file holds the text."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    queue = mp.get_context(method).SimpleQueue()
    context = mp.start_processes(
        _rank_main, args=(port, tool, argv, queue, signal_rank1), nprocs=2, start_method=method,
        join=False,
    )  # fmt: skip
    join_or_kill(context, timeout=240)
    assert sorted(queue.get() for _ in range(2)) == [(0, status), (1, status)]


@pytest.mark.slow
def test_two_processes_train_resume_and_evaluate(tmp_path, data_root):
    config = write_config(str(tmp_path), data_root)
    out = str(tmp_path / "ddp")
    opts = ["--config-file", config, "OUTPUT_DIR", out, "LOG.IMAGE_PERIOD", "0"]
    _torchrun("train_net", *opts, "SOLVER.MAX_ITER", "2")
    _two_ranks(train_net, [*opts, "SOLVER.MAX_ITER", "3"])

    log = open(os.path.join(out, "log.txt")).read()
    assert "world size 2" in log and "at iteration 2" in log
    assert log.count("training done at iteration 3") == 1  # rank 0 alone writes the log
    assert len([f for f in os.listdir(out) if f.startswith("events.out")]) == 2  # one per run
    state = torch.load(os.path.join(out, "model_0000003.pth"), weights_only=True)
    assert state["iteration"] == 3 and len(state["rng_states"]) == 2
    assert not any(k.startswith("module.") for k in state["model"])  # stored unwrapped
    # IMS_PER_BATCH 4 is the total: 2 images per process, recorded for evaluation.
    assert "4 images per iteration in total = 2 processes x 1 accumulation steps x 2" in log
    assert state["per_process_batch"] == 2

    # Evaluation with 2 ranks (TEST.IMS_PER_BATCH 4 -> 2 per rank) matches 1 process.
    _two_ranks(test_net, [*opts, "TEST.SAVE_PREDICTIONS", "True"])
    two = json.load(open(os.path.join(out, "metrics.json")))
    single = str(tmp_path / "single")
    weight = os.path.join(out, "model_0000003.pth")
    argv = ["--config-file", config, "OUTPUT_DIR", single, "MODEL.WEIGHT", weight]
    assert test_net.main([*argv, "TEST.SAVE_PREDICTIONS", "True"]) == 0
    one = json.load(open(os.path.join(single, "metrics.json")))
    single_log = open(os.path.join(single, "log.txt")).read()
    assert "divides the gradient inputs by 2 (the checkpoint's per-process" in single_log
    assert two["num_images"] == one["num_images"] == 6
    for key in ("fg_ari", "ari", "mse"):
        assert two[key] == pytest.approx(one[key], abs=1e-5), key
    for key in ("fg_ari_per_iter", "mse_per_iter"):
        assert two[key] == pytest.approx(one[key], abs=1e-5), key
    names = sorted(os.listdir(os.path.join(out, "predictions", "tetrominoes_synth_test")))
    assert names == [f"{i:06d}.png" for i in range(6)]
    for name in names:
        a = np.array(Image.open(os.path.join(out, "predictions", "tetrominoes_synth_test", name)))
        b = np.array(
            Image.open(os.path.join(single, "predictions", "tetrominoes_synth_test", name))
        )
        assert (a == b).mean() > 0.99, name  # batched convs are not bit-identical: near-ties


@pytest.mark.slow
def test_a_sigterm_to_one_rank_stops_both_with_one_checkpoint(tmp_path, data_root):
    config = write_config(str(tmp_path), data_root)
    out = str(tmp_path / "ddp")
    opts = ["--config-file", config, "OUTPUT_DIR", out, "LOG.IMAGE_PERIOD", "0"]
    opts += ["TEST.EVAL_PERIOD", "0", "SOLVER.CHECKPOINT_PERIOD", "1000"]
    log = os.path.join(out, "log.txt")
    sigterm = (log, "iter 3/", signal.SIGTERM)
    _two_ranks(train_net, [*opts, "SOLVER.MAX_ITER", "1000"], sigterm, 128 + signal.SIGTERM)
    name = open(os.path.join(out, "last_checkpoint")).read().strip()
    reached = int(name[len("model_") : -len(".pth")])
    assert reached >= 3 and open(log).read().count("WARNING iodine: SIGTERM: stopped at") == 1
    state = torch.load(os.path.join(out, name), weights_only=True)
    assert state["iteration"] == reached and len(state["rng_states"]) == 2
    _two_ranks(train_net, [*opts, "SOLVER.MAX_ITER", str(reached + 1)])
    assert f"training done at iteration {reached + 1}" in open(log).read()
