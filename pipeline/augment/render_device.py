"""``--render-device``: where a run renders its views (the CPU, or the model's GPU)."""

from __future__ import annotations

import torch

from ..runtime.device import resolve_device
from ..runtime.errors import UserError
from .config import LEGACY_RENDER_DEVICE, RENDER_DEVICE_CHOICES


def resolve_render_device(
    asked: str,
    model_device: torch.device,
    *,
    workers: int,
    store: str | None = None,
    recorded: str | None = None,
) -> torch.device:
    """Where a run renders its views: ``asked`` (a ``--render-device`` value) made concrete.

    Replaying a store (``store`` and its ``recorded`` device type given; None for a store that
    records none, i.e. one rendered on the CPU): ``auto`` is the recorded type and any other
    choice must equal it, since GPU and CPU resampling differ in the last bits and a replayed
    view must be bit-identical to the one the teachers saw. Otherwise ``auto`` is the model's
    device when rendering can run in the main process (``workers`` 0: CUDA cannot be used in
    forked DataLoader workers), else the CPU. ``cuda`` means the model's GPU (or this rank's).
    Every refusal is one :class:`UserError` line.
    """
    if asked not in RENDER_DEVICE_CHOICES:
        raise UserError(
            f"--render-device must be one of {', '.join(RENDER_DEVICE_CHOICES)}, got {asked!r}"
        )
    if store is not None:
        made_on = recorded if recorded is not None else LEGACY_RENDER_DEVICE
        if made_on not in ("cpu", "cuda"):
            raise UserError(f"store {store} records an unknown render device {made_on!r}")
        if asked not in ("auto", made_on):
            raise UserError(
                f"store {store} was rendered on {made_on}, but --render-device is {asked}: GPU "
                f"and CPU resampling differ in the last bits, so replayed views would not match; "
                f"use --render-device auto (or {made_on})"
            )
        chosen = made_on
    elif asked == "auto":
        chosen = model_device.type if workers == 0 and model_device.type == "cuda" else "cpu"
    else:
        chosen = asked
    if chosen == "cpu":
        return torch.device("cpu")
    source = (
        f"store {store} was rendered on cuda, which"
        if store is not None
        else ("--render-device cuda")
    )
    if not torch.cuda.is_available():
        raise UserError(f"{source} needs a CUDA device, and CUDA is not available here")
    if workers > 0:
        raise UserError(
            f"{source} renders in the main process (CUDA does not work in forked DataLoader "
            "workers): use --workers 0 with it"
        )
    if model_device.type == "cuda" and model_device.index is not None:
        return model_device
    return resolve_device("cuda")  # this rank's GPU
