"""Process-group setup for ``torchrun`` (nccl on GPU, gloo on CPU) and small helpers."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (if any).

    Args:
        device: "cpu", "cuda", or None for cuda:LOCAL_RANK when CUDA is available.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda:
        torch_device = torch.device(device if device and ":" in device else f"cuda:{local_rank}")
        torch.cuda.set_device(torch_device)
    else:
        torch_device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank, local_rank, world_size, torch_device)


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean over processes (identity without a process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def global_normalizer(count: torch.Tensor) -> torch.Tensor:
    """A per-process loss normaliser equivalent to one process's ``max(count, 1)`` on the global
    batch: ``max(sum of counts, 1) / world size`` (DDP then averages the gradients)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        count = count.clone()
        dist.all_reduce(count)
        return count.clamp(min=1) / dist.get_world_size()
    return count.clamp(min=1)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        # Every rank reaches the end before any tears its connections down: a rank that leaves
        # while a peer is still writing a checkpoint makes gloo abort the peer.
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()
