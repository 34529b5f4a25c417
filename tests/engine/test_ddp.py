"""DDP on gloo with the real model: its inner autograd.grad calls do not disturb DDP's hooks.

Each rank computes its gradient without DDP, then again through DDP from the same RNG state;
DDP's synchronised gradient must equal the mean of the ranks' plain gradients.
"""

import copy
import os
import socket

import torch
import torch.multiprocessing as mp

from lib.model import build_model
from lib.utils import comm
from tests.engine.engine_helpers import join_or_kill, tiny_cfg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, queue):
    os.environ.update(
        WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    torch.set_num_threads(1)
    comm.init_distributed(use_cuda=False)
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    plain = copy.deepcopy(model)
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(rank))

    torch.manual_seed(100 + rank)
    plain(images)["loss"].backward()
    local = torch.cat([p.grad.flatten() for p in plain.parameters() if p.requires_grad])
    expected = comm.all_reduce_mean(local)

    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=False)
    torch.manual_seed(100 + rank)
    ddp(images)["loss"].backward()
    synced = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
    error = ((synced - expected).abs().max() / expected.abs().max()).item()
    differs_from_local = not torch.allclose(synced, local)
    comm.destroy_distributed()
    queue.put((rank, error, differs_from_local))


def test_ddp_gradients_are_the_mean_of_plain_gradients():
    # fork: the children need no fresh interpreter (no CUDA here), and start in ms, not s.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    queue = ctx.SimpleQueue()
    join_or_kill(
        mp.start_processes(
            _worker, args=(2, _free_port(), queue), nprocs=2, start_method=method, join=False
        )
    )
    for _ in range(2):
        rank, error, differs_from_local = queue.get()
        assert error < 1e-5, (rank, error)
        assert differs_from_local  # the ranks' data differ, so syncing changed the gradient
