"""Device choice: CUDA when present (the local rank's GPU under torchrun), else the CPU."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .errors import UserError


def resolve_device(spec: str | None = None) -> torch.device:
    """Return the device for ``spec`` (``"auto"``/None, ``"cpu"``, ``"cuda"``, ``"cuda:1"``).

    ``auto`` picks ``cuda:<LOCAL_RANK>`` when CUDA is available, the CPU otherwise.
    """
    if spec is None or spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"unknown device {spec!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {spec!r} was asked for but CUDA is not available on this machine")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def cpu_thread_budget(requested: int | None, workers: int) -> int | None:
    """Intra-op threads for torch on the CPU; None leaves torch's setting alone.

    ``requested`` (a ``--threads`` option) wins; an explicit ``OMP_NUM_THREADS`` is respected;
    otherwise this rank's share of the cores minus one per DataLoader worker. More threads than
    free cores makes every forward wait on preempted threads: on a busy 2-core machine, two
    threads beside a worker ran the nano models about 10x slower than one.
    """
    if requested is not None:
        return requested
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    per_rank = max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, per_rank - workers)


@contextmanager
def cpu_threads(requested: int | None, workers: int, device: torch.device) -> Iterator[None]:
    """Run a stage with :func:`cpu_thread_budget` threads, restoring torch's setting after."""
    threads = cpu_thread_budget(requested, workers) if device.type == "cpu" else None
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
