"""torch.distributed under torchrun: process-group setup, rank facts, barriers.

Without torchrun (no ``WORLD_SIZE`` in the environment) everything degrades to one process and
no process group is created.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True, slots=True)
class DistContext:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 creates and finalizes shared artifacts and draws progress bars."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current_context() -> DistContext:
    """This process's rank and world size without joining anything: the process group's when
    one is initialized, else torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``, else one
    process (what the Python API's ``ReplayedViews`` reads)."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank)
    return DistContext(
        int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), local_rank
    )


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA), if any."""
    if not launched_by_torchrun():
        return DistContext()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
        if device.type == "cuda":
            torch.cuda.set_device(device)
    return DistContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def barrier(ctx: DistContext) -> None:
    if ctx.is_distributed and dist.is_initialized():
        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    if ctx.is_distributed and dist.is_initialized():
        dist.destroy_process_group()
