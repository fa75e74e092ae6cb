"""The typed state of a training run: everything a resumed run needs besides the weights.

A checkpoint stores it under ``"train_state"`` as plain containers and tensors, so it loads with
``torch.load(..., weights_only=True)``. The data position is ``(epoch, step_in_epoch)``: the
streams are pure functions of ``(seed, epoch, rank)`` and can start at any step, so no loader
state is needed. The RNG of the CPU and of every CUDA device is kept: each step re-seeds torch
anyway, but restoring it keeps a resumed process identical to one that never stopped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

STATE_VERSION = 2
"""Version 1: train-student's dict (same keys). Unversioned: train-teacher's ``{"epoch",
"step", "optimizer", "rng"}``, written after whole epochs only."""


def capture_rng() -> dict[str, Any]:
    """Torch's RNG state on the CPU and on every visible CUDA device (tensors only)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Put back what :func:`capture_rng` saved; CUDA states are restored when CUDA is here.

    A single tensor under ``"cuda"`` (version-1 student checkpoints saved only the current
    device) is restored to the current device.
    """
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is None or not torch.cuda.is_available():
        return
    if isinstance(cuda, Tensor):
        torch.cuda.set_rng_state(cuda)
    else:
        torch.cuda.set_rng_state_all(list(cuda)[: torch.cuda.device_count()])


@dataclass(kw_only=True)
class TrainState:
    """Where a run stands after its last saved step."""

    epoch: int
    """The epoch the run continues with (0-based; equals the finished epochs at an epoch end)."""
    step_in_epoch: int
    """Steps of ``epoch`` already taken (0 at an epoch boundary)."""
    global_step: int
    """Optimizer steps taken in the whole run; the learning rate is a function of it."""
    optimizer: dict[str, Any]
    """``optimizer.state_dict()``."""
    schedule: dict[str, Any] | None
    """The learning-rate schedule (``ScheduleConfig`` as a dict); None in unversioned states."""
    rng: dict[str, Any] = field(default_factory=dict)
    """:func:`capture_rng` at the time of saving."""
    identity: dict[str, Any] = field(default_factory=dict)
    """Derived facts of the run that are not config fields (world size, resolved seed, data and
    teacher fingerprints...): a resumed run must derive the same."""
    scaler: dict[str, Any] | None = None
    """The fp16 gradient scaler's ``state_dict()`` (None without one, and in older states)."""

    def to_dict(self) -> dict[str, Any]:
        """The plain dict stored in the checkpoint."""
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "optimizer": self.optimizer,
            "schedule": self.schedule,
            "rng": self.rng,
            "identity": self.identity,
            "scaler": self.scaler,
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> TrainState:
        """Read any version this code wrote (see :data:`STATE_VERSION`)."""
        if "global_step" not in state:  # unversioned train-teacher state: whole epochs only
            return cls(
                epoch=int(state["epoch"]),
                step_in_epoch=0,
                global_step=int(state["step"]),
                optimizer=dict(state["optimizer"]),
                schedule=None,
                rng=dict(state.get("rng") or {}),
            )
        return cls(
            epoch=int(state["epoch"]),
            step_in_epoch=int(state["step_in_epoch"]),
            global_step=int(state["global_step"]),
            optimizer=dict(state["optimizer"]),
            schedule=dict(state["schedule"]) if state.get("schedule") is not None else None,
            rng=dict(state.get("rng") or {}),
            identity=dict(state.get("identity") or {}),
            scaler=dict(state["scaler"]) if state.get("scaler") else None,
        )
