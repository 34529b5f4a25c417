"""Helpers for multi-process (torchrun / DistributedDataParallel) runs.

Every function works, as a no-op or the obvious single-process answer, when the process group
is not initialised, so the same code runs under ``python tools/train_net.py`` and under
``torchrun --nproc_per_node N tools/train_net.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


def is_dist() -> bool:
    """Whether a process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    """Number of processes in the run (1 when not distributed)."""
    return dist.get_world_size() if is_dist() else 1


def get_rank() -> int:
    """Global rank of this process (0 when not distributed)."""
    return dist.get_rank() if is_dist() else 0


def get_local_rank() -> int:
    """Rank of this process on its machine, from torchrun's LOCAL_RANK (0 when unset)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """Whether this process logs, writes TensorBoard events and checkpoints (rank 0)."""
    return get_rank() == 0


def init_distributed(use_cuda: bool, timeout_minutes: int = 30) -> bool:
    """Initialise the default process group from torchrun's environment variables when
    ``WORLD_SIZE`` > 1 (returns whether one exists): NCCL on CUDA (this process bound to GPU
    ``LOCAL_RANK % device_count``), else gloo. ``timeout_minutes``: the longest one rank waits
    for the others (e.g. while rank 0 writes a checkpoint or prediction PNGs)."""
    if is_dist():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise RuntimeError(
                f"WORLD_SIZE > 1 but environment variable {key} is unset: launch with torchrun"
            )
    if use_cuda:
        # A process that sees one GPU (CUDA_VISIBLE_DEVICES per rank) uses its GPU 0.
        torch.cuda.set_device(get_local_rank() % torch.cuda.device_count())
    dist.init_process_group(
        backend="nccl" if use_cuda else "gloo",
        init_method="env://",
        timeout=timedelta(minutes=timeout_minutes),
    )
    return True


def destroy_distributed() -> None:
    """Tear down the process group if one exists."""
    if is_dist():
        dist.destroy_process_group()


def synchronize() -> None:
    """Barrier across all processes; no-op when not distributed."""
    if is_dist() and get_world_size() > 1:
        dist.barrier()


def _collective_device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo only CPU ones.
    if is_dist() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce(tensor: torch.Tensor, op: Any) -> torch.Tensor:
    if not is_dist() or get_world_size() == 1:
        return tensor.clone()
    buffer = tensor.detach().to(_collective_device()).clone()
    dist.all_reduce(buffer, op=op)
    return buffer.to(tensor.device)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """A new tensor (shape, dtype and device of ``tensor``): its sum over all processes."""
    return _all_reduce(tensor, dist.ReduceOp.SUM)


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over all processes (as ``all_reduce_sum``)."""
    return all_reduce_sum(tensor) / get_world_size()


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise maximum of a tensor over all processes (as ``all_reduce_sum``)."""
    return _all_reduce(tensor, dist.ReduceOp.MAX)


def host_group() -> Any:
    """A group for small host-side collectives (``max_over_ranks``): the default group on
    gloo, a new gloo group beside NCCL (collective: every rank calls it), None alone."""
    if is_dist() and dist.get_backend() == "nccl":
        return dist.new_group(backend="gloo")
    return None


def max_over_ranks_async(value: int, group: Any = None) -> Callable[[], int]:
    """Start taking the maximum of an int over all processes, on the CPU through ``group``
    (from ``host_group``), without waiting: no device sync, and no rank waits for another
    until the returned function is called for the result."""
    if not is_dist() or get_world_size() == 1:
        return lambda: value
    buffer = torch.tensor([value], dtype=torch.int64, device="cpu")
    work = dist.all_reduce(buffer, op=dist.ReduceOp.MAX, group=group, async_op=True)

    def result() -> int:
        work.wait()
        return int(buffer.item())

    return result


def all_gather_object(obj: Any) -> list[Any]:
    """Gather one picklable object from every process.

    Returns:
        List of length world size, entry r from rank r (``[obj]`` when not distributed).
    """
    if not is_dist() or get_world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
