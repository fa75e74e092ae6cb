"""How much of its ViT teacher a CNN student took on: the transferability cosine.

Liu et al. (ACCV 2022) compare distillation methods by how similar the student's outputs are to
the teacher's (Figs. 1b and 3b). Here that is, per image, the cosine similarity between the
teacher's and the student's class-probability vectors (softmax of the logits, τ = 1), averaged
over the evaluation data: 1 when the two predict alike, lower as they part. ``evaluate`` reports
it for a student trained by ``train-cakd`` (any method), against the teacher that run names.
The student's checkpoint keeps no projectors, so the cosine is taken on the outputs, which
every method's student has, not on projected features.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.heads import inference_head, prediction
from ..runtime.distributed import DistContext


def prediction_cosine(teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
    """Per row, ``cos(softmax(z_T), softmax(z_S))``, float64 ``[N]``."""
    p_t = torch.softmax(teacher_logits.to(torch.float64), dim=-1)
    p_s = torch.softmax(student_logits.to(torch.float64), dim=-1)
    return F.cosine_similarity(p_t, p_s, dim=-1)


def recorded_teacher(meta: Mapping[str, Any]) -> str | None:
    """The ``NAME=ARCH:CHECKPOINT`` teacher a ``train-cakd`` student's checkpoint records, or
    None for a checkpoint from any other command."""
    config = meta.get("config") or {}
    teacher = config.get("teacher")
    if isinstance(teacher, str) and "method" in config and "lambda_mvg" in config:
        return teacher
    return None


@dataclass
class TransferabilityObserver:
    """An :class:`..train.validate.BatchObserver`: runs ``teacher`` on each evaluation batch
    and accumulates :func:`prediction_cosine` against the student's ``head``.

    ``teacher`` must see what the student sees (wrapped in the same noise when the student is).
    """

    teacher: nn.Module
    head: str
    name: str = "transferability"
    total: float = 0.0
    count: int = 0

    @torch.no_grad()
    def observe(self, outputs: dict[str, Tensor], batch: Any) -> None:
        images = batch.images.to(outputs[self.head].device)
        logits = prediction(self.teacher(images), inference_head(self.teacher)).float()
        self.total += float(prediction_cosine(logits, outputs[self.head]).sum())
        self.count += len(images)

    def result(self, ctx: DistContext, device: torch.device) -> float:
        """The mean cosine over every image (summed over the ranks when distributed)."""
        sums = torch.tensor([self.total, float(self.count)], dtype=torch.float64)
        if ctx.is_distributed:
            sums = sums.to(device)
            torch.distributed.all_reduce(sums)
        return float(sums[0] / sums[1].clamp(min=1))
