"""torch.distributed set-up for stage two and teacher training (torchrun / DDP).

Under ``torchrun`` (RANK, WORLD_SIZE, LOCAL_RANK in the environment) this joins the process
group: NCCL on CUDA, gloo on CPU (the CPU tests run real two-process gloo DDP). Without those
variables everything runs in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(prefer_cuda: bool = True) -> DistInfo:
    """Join the torchrun process group if there is one, and pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = prefer_cuda and torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank, world_size, local_rank, device)


def cleanup_distributed() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean over ranks of a tensor (a scalar, or a stack of a step's loss terms: one
    collective for them all), for logging."""
    if not info.enabled:
        return value
    value = value.detach().clone()
    torch.distributed.all_reduce(value)
    return value / info.world_size
