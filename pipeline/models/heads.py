"""Which heads a student has, how they map to teachers, and inference from them.

Every student returns ``dict[str, Tensor]``: ``"cls"`` (trained on the labels) plus one entry per
teacher name (trained against that teacher). The token mode (:mod:`.token_mode`) decides how many
distillation tokens/heads stand behind those entries. Every student also names its headline
inference head (:func:`inference_head`): ``"cls"``, or ``"mean"`` for the aligned CivT, whose
official code reports the mean of its three heads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..runtime.errors import UserError
from .token_mode import TOKEN_MODES, TokenMode, check_aligned_teacher_count

CLS = "cls"
MEAN = "mean"


@dataclass(frozen=True)
class HeadPlan:
    """The distillation heads of a student.

    Args:
        teacher_names: one output key per teacher (unique, not ``"cls"``, no dots).
        token_mode: one of :data:`.token_mode.TOKEN_MODES`. ``"cls"`` keeps the teacher names:
            each maps to the class logits themselves (one head fits labels and teachers);
            ``"aligned"`` needs exactly two teachers.
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
            if not name or "." in name or name in (CLS, MEAN):
                raise UserError(
                    f"teacher name {name!r} is not usable as a head name "
                    "(it must be non-empty, contain no dot, and not be 'cls' or 'mean')"
                )
            if name in seen:
                raise UserError(f"teacher name {name!r} is given twice")
            seen.add(name)
        if self.token_mode == "aligned":
            check_aligned_teacher_count(self.teacher_names)
        if self.token_mode == "none":
            # Without distillation tokens the teacher names have no head to map to.
            object.__setattr__(self, "teacher_names", ())

    @property
    def num_distill(self) -> int:
        """Distillation tokens (and heads) the student needs."""
        if self.token_mode in ("per-teacher", "aligned"):
            return len(self.teacher_names)
        if self.token_mode == "shared":
            return 1 if self.teacher_names else 0
        return 0

    def distill_index(self, teacher: str) -> int:
        """Index of the distillation token/head that serves ``teacher``."""
        return 0 if self.token_mode == "shared" else self.teacher_names.index(teacher)

    def outputs(self, cls_logits: Tensor, distill_logits: Sequence[Tensor]) -> dict[str, Tensor]:
        """The output dict: ``"cls"`` then one entry per teacher.

        In ``"cls"`` mode every teacher's entry *is* ``cls_logits`` (the same tensor object), so
        the loss's KL terms act on the class head and ``prediction(..., "mean")`` counts it once.
        """
        out = {CLS: cls_logits}
        for name in self.teacher_names:
            if self.token_mode == "cls":
                out[name] = cls_logits
            else:
                out[name] = distill_logits[self.distill_index(name)]
        return out


def pooled_head_plan(arch: str, teacher_names: Sequence[str], token_mode: TokenMode) -> HeadPlan:
    """The :class:`HeadPlan` of a student without tokens (``arch`` names it in errors).

    ``"per-teacher"`` gives one head per teacher; ``"cls"`` is the single-head option (one
    output trained on the labels and every teacher); ``"aligned"`` needs a CivT's patch stems.
    """
    if token_mode == "aligned":
        raise UserError(
            f"token mode 'aligned' needs a CivT student (civt-nano, civt-ti, civt-s); {arch} has "
            "no patch tokens to align"
        )
    return HeadPlan(tuple(teacher_names), token_mode)


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
    if head == MEAN:
        distinct: list[Tensor] = []
        for tensor in outputs.values():
            if not any(tensor is seen for seen in distinct):
                distinct.append(tensor)
        return torch.stack(distinct).mean(dim=0)
    if head not in outputs:
        raise UserError(f"unknown head {head!r}; this model has: mean, {', '.join(outputs)}")
    return outputs[head]


def inference_head(model: nn.Module) -> str:
    """The head a student reports as its headline prediction (``"cls"`` or ``"mean"``).

    Read from the first submodule with an ``inference_head`` attribute, so wrappers (the
    normalizing wrapper, DDP) need not forward it; a model without one (a teacher) gets ``"cls"``.
    """
    for module in model.modules():
        head = getattr(module, "inference_head", None)
        if isinstance(head, str):
            return head
    return CLS
