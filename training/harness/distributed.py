"""Distributed training helpers: one small module, as open_clip does.

`torchrun` sets RANK / LOCAL_RANK / WORLD_SIZE; without them everything runs as a single process.
NCCL on GPU, gloo on CPU. Only rank 0 logs and saves; everyone waits at `barrier()` after saving.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class WorldInfo:
    """Where this process sits in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def world_info_from_env() -> WorldInfo:
    """Read torchrun's environment variables (defaults: a single process)."""
    return WorldInfo(
        rank=int(os.environ.get("RANK", 0)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
    )


def init_distributed(device_type: str) -> WorldInfo:
    """Join the process group when launched by torchrun; return this process's place in it."""
    world = world_info_from_env()
    if world.distributed and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend=backend)
    return world


def is_main() -> bool:
    """True on rank 0 (or when not distributed)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (identity in a single process)."""
    if not dist.is_initialized():
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / dist.get_world_size()


def all_ranks(flag: bool) -> bool:
    """True when `flag` is true on every rank; ranks must call it together (a tiny all-reduce).

    Used so that all ranks skip a step together (e.g. a batch whose images were all unreadable on
    one rank) instead of the others waiting forever in DDP's gradient all-reduce.
    """
    if not dist.is_initialized():
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def cleanup_distributed() -> None:
    """Leave the process group if we joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def default_device() -> torch.device:
    """The device a job runs on: the GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def wrap_ddp(
    model: torch.nn.Module, world: WorldInfo, device: torch.device, *, find_unused_parameters: bool = False
) -> torch.nn.Module:
    """`model` in DistributedDataParallel when the job is distributed, else `model` itself."""
    if not world.distributed:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)
