"""comm helpers: single-process no-ops and a real two-process gloo group."""

import os
import socket
import time

import torch
import torch.multiprocessing as mp

from lib.utils import comm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_single_process_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert comm.init_distributed(use_cuda=False) is False
    assert (comm.get_world_size(), comm.get_rank(), comm.is_main_process()) == (1, 0, True)
    x = torch.tensor([1.0, 2.0])
    assert torch.equal(comm.all_reduce_sum(x), x) and comm.all_reduce_sum(x) is not x
    assert torch.equal(comm.all_reduce_mean(x), x)
    assert comm.all_gather_object({"a": 1}) == [{"a": 1}]
    comm.synchronize()
    comm.destroy_distributed()


def _worker(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(
        WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    assert comm.init_distributed(use_cuda=False)
    result = {
        "rank": comm.get_rank(),
        "world": comm.get_world_size(),
        "sum": comm.all_reduce_sum(torch.tensor([rank + 1.0, 10.0])).tolist(),
        "mean": comm.all_reduce_mean(torch.tensor([rank * 2.0])).tolist(),
        "max": comm.all_reduce_max(torch.tensor([rank])).tolist(),
        "gather": comm.all_gather_object(("r", rank)),
    }
    comm.synchronize()
    comm.destroy_distributed()
    queue.put(result)


def test_two_gloo_processes():
    # fork: the children need no fresh interpreter (no CUDA here), and start in ms, not s.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    queue = ctx.SimpleQueue()
    context = mp.start_processes(
        _worker, args=(2, _free_port(), queue), nprocs=2, start_method=method, join=False
    )
    deadline = time.time() + 120
    while not context.join(timeout=1.0):  # never hang the test run on a deadlock
        if time.time() > deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError("gloo workers still running after 120 s")
    results = sorted((queue.get() for _ in range(2)), key=lambda r: r["rank"])
    for rank, r in enumerate(results):
        assert r["rank"] == rank and r["world"] == 2
        assert r["sum"] == [3.0, 20.0]
        assert r["mean"] == [1.0]
        assert r["max"] == [1]
        assert r["gather"] == [("r", 0), ("r", 1)]
