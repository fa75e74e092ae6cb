"""Device choice: CUDA when present (the local rank's GPU under torchrun), else the CPU."""

from __future__ import annotations

import os

import torch

from civt_pipe.pipeline.errors import UserError


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
