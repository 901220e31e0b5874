"""torch.distributed helpers: a process knows its rank; only rank 0 logs and saves."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def init_from_env(device: str) -> bool:
    """Join the process group torchrun describes (RANK/WORLD_SIZE set); gloo on CPU, NCCL on CUDA."""
    if is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return is_initialized()
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
