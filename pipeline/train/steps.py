"""The two training steps: what one batch contributes to the loss, without the optimizer.

Each is a small callable ``(model, batch) -> StepResult`` that :func:`.loop.fit` (and a test)
can run on its own: :class:`ClassificationStep` for ``train-teacher`` (cross-entropy on hard
labels), :class:`DistillationStep` for ``train-student`` (paper Eq. 5 against teacher targets).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .loop import StepResult
from .losses import civt_loss

TargetsFn = Callable[[Any, Tensor], dict[str, Tensor]]
"""``(batch, images on the device) -> {teacher: probabilities [B, C] at its τ}``; a hard teacher
(:attr:`DistillationStep.hard`) gives its arg-max classes ``[B]`` instead."""


@dataclass(frozen=True, kw_only=True)
class ClassificationStep:
    """Cross-entropy of a classifier on ``(images, labels)``; logs the loss and top-1."""

    device: torch.device
    label_smoothing: float = 0.0

    def __call__(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> StepResult:
        images, labels = batch
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        logits = model(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        top1 = (logits.detach().argmax(1) == labels).double().mean()
        return StepResult(loss=loss, terms={"loss": loss, "top1": top1}, batch_size=len(labels))


@dataclass(frozen=True, kw_only=True)
class DistillationStep:
    """Paper Eq. 5 on a batch of views (``images``, ``label_targets``): class-token
    cross-entropy plus one term per teacher (KL, or cross-entropy to the teacher's arg-max for
    the teachers in ``hard``); logs ``loss``, ``loss_cls``, ``loss_kd_<name>``.

    Without distillation (``distill=False``, token mode ``none``) the teachers' targets are
    never computed: only the class-token term remains.
    """

    targets: TargetsFn
    taus: Mapping[str, float]
    lambdas: Mapping[str, float]
    device: torch.device
    lambda_cls: float = 1.0
    label_smoothing: float = 0.0
    distill: bool = True
    hard: frozenset[str] = frozenset()
    """Teachers distilled hard (DeiT): their targets are arg-max classes."""
    distill_smoothing: float = 0.0
    """Label smoothing of the hard teachers' cross-entropy."""

    def __call__(self, model: nn.Module, batch: Any) -> StepResult:
        images = batch.images.to(self.device, non_blocking=True)
        label_targets = batch.label_targets.to(self.device)
        probs = self.targets(batch, images) if self.distill else {}
        loss = civt_loss(
            model(images),
            label_targets,
            probs,
            lambda_cls=self.lambda_cls,
            lambdas=self.lambdas if self.distill else {},
            taus=self.taus,
            label_smoothing=self.label_smoothing,
            hard=self.hard,
            distill_smoothing=self.distill_smoothing,
        )
        terms = {"loss": loss.total, "loss_cls": loss.cls}
        terms.update({f"loss_kd_{name}": term for name, term in loss.kd.items()})
        return StepResult(loss=loss.total, terms=terms, batch_size=len(images))
