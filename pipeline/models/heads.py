"""Which heads a student has, how they map to teachers, and inference from them.

Every student returns ``dict[str, Tensor]``: ``"cls"`` (trained on the labels) plus one entry per
teacher name (trained against that teacher). The token mode (:mod:`.token_mode`) decides how many
distillation tokens/heads stand behind those entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..runtime.errors import UserError
from .token_mode import TOKEN_MODES, TokenMode

CLS = "cls"


@dataclass(frozen=True)
class HeadPlan:
    """The distillation heads of a student.

    Args:
        teacher_names: one output key per teacher (unique, not ``"cls"``, no dots).
        token_mode: ``"per-teacher"``, ``"shared"`` or ``"none"``.
    """

    teacher_names: tuple[str, ...] = ()
    token_mode: TokenMode = "per-teacher"

    def __post_init__(self) -> None:
        object.__setattr__(self, "teacher_names", tuple(self.teacher_names))
        if self.token_mode not in TOKEN_MODES:
            raise UserError(
                f"unknown token mode {self.token_mode!r}; choose one of {', '.join(TOKEN_MODES)}"
            )
        seen: set[str] = set()
        for name in self.teacher_names:
            if not name or "." in name or name == CLS or name in ("mean",):
                raise UserError(
                    f"teacher name {name!r} is not usable as a head name "
                    "(it must be non-empty, contain no dot, and not be 'cls' or 'mean')"
                )
            if name in seen:
                raise UserError(f"teacher name {name!r} is given twice")
            seen.add(name)
        if self.token_mode == "none":
            # Without distillation tokens the teacher names have no head to map to.
            object.__setattr__(self, "teacher_names", ())

    @property
    def num_distill(self) -> int:
        """Distillation tokens (and heads) the student needs."""
        if self.token_mode == "per-teacher":
            return len(self.teacher_names)
        if self.token_mode == "shared":
            return 1 if self.teacher_names else 0
        return 0

    def distill_index(self, teacher: str) -> int:
        """Index of the distillation token/head that serves ``teacher``."""
        return 0 if self.token_mode == "shared" else self.teacher_names.index(teacher)

    def outputs(self, cls_logits: Tensor, distill_logits: Sequence[Tensor]) -> dict[str, Tensor]:
        """The output dict: ``"cls"`` then one entry per teacher."""
        out = {CLS: cls_logits}
        for name in self.teacher_names:
            out[name] = distill_logits[self.distill_index(name)]
        return out


class MultiHead(nn.Module):
    """Linear heads on one pooled feature vector (students without tokens: ResNet-10, Mixer)."""

    def __init__(self, dim: int, num_classes: int, plan: HeadPlan) -> None:
        super().__init__()
        self.plan = plan
        self.cls = nn.Linear(dim, num_classes)
        self.distill = nn.ModuleList(nn.Linear(dim, num_classes) for _ in range(plan.num_distill))

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        return self.plan.outputs(self.cls(features), [head(features) for head in self.distill])


def prediction(outputs: dict[str, Tensor] | Tensor, head: str = CLS) -> Tensor:
    """Inference logits from a model's outputs.

    Args:
        outputs: a student's output dict (a teacher's logits tensor is returned as is).
        head: ``"cls"`` (paper text), ``"mean"`` (official code: mean of the logits of all
            *distinct* heads, so a shared token counts once) or a teacher name.
    """
    if isinstance(outputs, Tensor):
        return outputs
    if head == "mean":
        distinct: list[Tensor] = []
        for tensor in outputs.values():
            if not any(tensor is seen for seen in distinct):
                distinct.append(tensor)
        return torch.stack(distinct).mean(dim=0)
    if head not in outputs:
        raise UserError(f"unknown head {head!r}; this model has: mean, {', '.join(outputs)}")
    return outputs[head]
