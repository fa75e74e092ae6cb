"""Device choice: CUDA when present (the local rank's GPU under torchrun), else the CPU.

Torch-free at import: :func:`check_device` and :func:`surely_cpu` let the command line refuse
a device that cannot exist before torch is imported (:mod:`..runtime.precision` and the stage
configs' ``preflight``); :func:`resolve_device` imports torch and has the last word.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:
    import torch

_DEVICE_RE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")

# Device nodes without which no CUDA (or ROCm, which torch also calls "cuda") device can be
# opened: NVIDIA's character devices, WSL2's GPU paravirtualization, AMD's compute driver.
_GPU_NODES = ("nvidia[0-9]*", "dxg", "kfd")


def _no_cuda_message(spec: str) -> str:
    return f"device {spec!r} was asked for but CUDA is not available on this machine"


def gpu_may_exist() -> bool:
    """False when this machine surely has no GPU torch could use: ``CUDA_VISIBLE_DEVICES``
    hides them all, or no GPU device node exists under ``/dev``. True means only "maybe":
    torch (a CPU-only build, a driver that does not load) decides in :func:`resolve_device`."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    dev = Path("/dev")
    return any(next(dev.glob(pattern), None) is not None for pattern in _GPU_NODES)


def check_device(spec: str | None) -> None:
    """Torch-free, before any work: ``spec`` names a device (``auto``, ``cpu``, ``cuda``,
    ``cuda:N``) and a CUDA one could exist (:func:`gpu_may_exist`). The same one-line errors as
    :func:`resolve_device`, which still checks what only torch can tell."""
    if spec is None or spec == "auto":
        return
    match = _DEVICE_RE.match(spec)
    if match is None:
        raise UserError(f"unknown device {spec!r} (use auto, cpu, cuda or cuda:N)")
    if match.group(1) == "cuda" and not gpu_may_exist():
        raise UserError(_no_cuda_message(spec))


def surely_cpu(spec: str | None) -> bool:
    """Whether ``spec`` resolves to the CPU whatever torch finds (torch-free)."""
    return spec == "cpu" or (spec in (None, "auto") and not gpu_may_exist())


def resolve_device(spec: str | None = None) -> torch.device:
    """Return the device for ``spec`` (``"auto"``/None, ``"cpu"``, ``"cuda"``, ``"cuda:1"``).

    ``auto`` picks ``cuda:<LOCAL_RANK>`` when CUDA is available, the CPU otherwise.
    """
    import torch

    if spec is None or spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    check_device(spec)
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"unknown device {spec!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(_no_cuda_message(spec))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def cpu_thread_budget(requested: int | None, workers: int) -> int | None:
    """Intra-op threads for torch on the CPU; None leaves torch's setting alone.

    ``requested`` (a ``--threads`` option) wins; an explicit ``OMP_NUM_THREADS`` is respected;
    otherwise this rank's share of the free cores minus one per DataLoader worker, where the
    free cores are the cores less those other processes keep busy right now (measured over
    0.1 s: :func:`_busy_cores`). More threads than free cores makes every forward wait on
    preempted threads: on a busy 2-core machine two threads beside a worker ran the nano
    models about 10x slower than one (before OpenMP's passive waiting), and beside one
    CPU-bound process train-student's two threads ran at 0.79 of one thread's speed.
    """
    if requested is not None:
        return requested
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    free = max(1, cores - _busy_cores())
    per_rank = max(1, free // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, per_rank - workers)


def _busy_cores(window: float = 0.1) -> int:
    """Cores other processes keep busy now, rounded to the nearest: the machine's busy CPU time
    less this process's own over a short ``window`` (0 where /proc is missing). Measured, not
    the load average: that lags a minute, so a stage right after another (train-teacher, then
    dump-logits) would count its predecessor as other work."""
    try:
        machine0, own0 = _cpu_ticks(), _own_ticks()
        time.sleep(window)
        machine1, own1 = _cpu_ticks(), _own_ticks()
    except (OSError, ValueError, IndexError):
        return 0
    busy, total = machine1[0] - machine0[0], machine1[1] - machine0[1]
    if total <= 0:
        return 0
    cores = total / max(window * os.sysconf("SC_CLK_TCK"), 1e-9)
    others = max(0, busy - (own1 - own0)) / total * cores
    return int(others + 0.5)


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of every CPU since boot, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    return total - idle, total


def _own_ticks() -> int:
    """This process's user + system clock ticks (every thread), from /proc/self/stat."""
    with open("/proc/self/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


@contextmanager
def cpu_threads(requested: int | None, workers: int, device: torch.device) -> Iterator[None]:
    """Run a stage with :func:`cpu_thread_budget` threads, restoring torch's setting after."""
    import torch

    threads = cpu_thread_budget(requested, workers) if device.type == "cpu" else None
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
