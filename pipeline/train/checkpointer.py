"""One checkpointer for every training stage: atomic saves, typed loads, ONE resume rule.

The file is the model checkpoint ``evaluate`` reads (:mod:`..models.checkpoint`: weights, model
arguments, class names, metrics, config) plus ``"train_state"`` (:class:`.state.TrainState`).

The resume rule: a resumed run must compute what the run it continues would have computed.

- **Config fields** decide through their declaration: a field declared with
  ``option(..., resume="may-change")`` may differ; every other field (plain fields included)
  must equal the saved value (:func:`..runtime.options.resume_mismatch`). A new option that
  changes results therefore refuses to resume until someone says otherwise.
- **Derived facts** that are no config field (world size, resolved seed, data fingerprint,
  teacher checkpoint digests, augmentation...) are the run's *identity*: all must match.
- **The schedule** (learning rate per global step) must match.

A mismatch is one line: ``cannot resume PATH: it was trained with FIELD=SAVED, this run has NOW``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.checkpoint import (
    load_checkpoint,
    save_checkpoint,
    save_safetensors,
    weights_file,
)
from ..runtime.errors import UserError
from ..runtime.options import resume_mismatch
from .state import TrainState, capture_rng, restore_rng

CheckpointMaker = Callable[[nn.Module, dict[str, Any] | None, Mapping[str, Any]], dict[str, Any]]
"""``(model, train_state dict or None, metrics) -> checkpoint dict`` (the stage's
:func:`..models.checkpoint.make_checkpoint` call with its class names and config)."""


IDENTITY_DEFAULTS: dict[str, Any] = {"precision": "fp32"}
"""Derived facts recorded since a later version, with the value every run saved before had
(a run from before ``--precision`` trained in fp32)."""


def _plain(value: Any) -> Any:
    """JSON-normalized value (tuples become lists), so saved and current compare fairly."""
    return json.loads(json.dumps(value))


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """A loaded resumable checkpoint."""

    checkpoint: dict[str, Any]
    state: TrainState


@dataclass(kw_only=True)
class Checkpointer:
    """Saves and resumes one run's checkpoint file.

    Only the main rank writes; every rank may load (each rank restores the same state).
    """

    path: Path
    """The resumable checkpoint (``train-teacher --out``, ``RUN_DIR/last.pt``)."""
    make: CheckpointMaker
    kind: str
    """``"teacher"`` or ``"student"``: the checkpoint kind a resume expects."""
    command: str
    """Named in errors (``train-teacher``)."""
    identity: dict[str, Any]
    """This run's derived facts (see the module docstring); stored with every save."""
    schedule: dict[str, Any]
    """This run's learning-rate schedule as a dict; stored with every save."""
    is_main: bool = True

    def save(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        epoch: int,
        step_in_epoch: int,
        global_step: int,
        metrics: Mapping[str, Any],
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        """Atomically write the resumable checkpoint at this data position (main rank only);
        with ``scaler`` (fp16) its state too."""
        if not self.is_main:
            return
        state = TrainState(
            epoch=epoch,
            step_in_epoch=step_in_epoch,
            global_step=global_step,
            optimizer=optimizer.state_dict(),
            schedule=self.schedule,
            rng=capture_rng(),
            identity=_plain(self.identity),
            scaler=scaler.state_dict() if scaler is not None else None,
        )
        save_checkpoint(self.path, self.make(model, state.to_dict(), metrics))

    def save_final(self, model: nn.Module, path: Path, metrics: Mapping[str, Any]) -> None:
        """Write a checkpoint without training state (main rank only): a finished model, and
        its weights as safetensors beside it (``final.pt`` → ``final.safetensors``)."""
        if self.is_main:
            ckpt = self.make(model, None, metrics)
            save_checkpoint(path, ckpt)
            save_safetensors(weights_file(path), ckpt)

    def load(self) -> ResumePoint:
        """Read :attr:`path`; anything but a resumable checkpoint of :attr:`kind` is an error."""
        ckpt = load_checkpoint(self.path)
        state = ckpt.get("train_state")
        if ckpt.get("kind") != self.kind or not isinstance(state, dict):
            raise UserError(f"{self.path} is not a resumable {self.command} checkpoint")
        return ResumePoint(checkpoint=ckpt, state=TrainState.from_dict(state))

    def check(self, point: ResumePoint, config_type: type, config: Mapping[str, Any]) -> None:
        """Apply the resume rule (module docstring) to ``config`` (the current config as a dict).

        Derived facts are looked up in the saved identity, then in the saved config (runs that
        recorded them there, before the identity existed).
        """
        saved_config = _plain(point.checkpoint.get("config") or {})
        current = _plain(dict(config))
        name = resume_mismatch(config_type, saved_config, current)
        if name is not None:
            self._refuse(name, saved_config.get(name), current[name])
        saved_identity = point.state.identity
        for key, value in _plain(self.identity).items():
            if key in saved_identity:
                saved = saved_identity[key]
            else:
                saved = saved_config.get(key, IDENTITY_DEFAULTS.get(key))
            if saved != value:
                self._refuse(key, saved, value)
        if point.state.schedule is not None and point.state.schedule != _plain(self.schedule):
            self._refuse("schedule", point.state.schedule, _plain(self.schedule))

    def restore(
        self, point: ResumePoint, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> TrainState:
        """Load weights, optimizer state and the RNG of every device; returns the position."""
        model.load_state_dict(point.checkpoint["state_dict"])
        optimizer.load_state_dict(point.state.optimizer)
        restore_rng(point.state.rng)
        return point.state

    def _refuse(self, name: str, saved: Any, current: Any) -> None:
        raise UserError(
            f"cannot resume {self.path}: it was trained with {name}={saved!r}, "
            f"this run has {current!r}"
        )
