"""Losses of Co-advise / CivT as pure functions on tensors.

Paper Eq. 5 (Ren et al., CVPR 2022):

    L = λ0·CE(σ(z_cls), y) + Σ_t λt·τt²·KL(σ(z_t/τt) ‖ σ(z_s,t/τt))

with z_t teacher t's logits and z_s,t the student's output on teacher t's distillation token.

A teacher may instead be distilled *hard*, as in DeiT (Touvron et al., 2021, Eq. 3): its term is
the cross-entropy of the student's output for it against the teacher's arg-max class,
``λt·CE(σ(z_s,t), argmax z_t)``, with no τ and an optional label smoothing ε (DeiT's code leaves it
0). DeiT weighs it as ``(1-α)·CE + α·CE_hard`` with α = 0.5: ``--lambda-cls 0.5 --lambda 0.5``.

Reductions, written down because they change the scale of every term:
- cross-entropy: mean over the batch of the per-sample sum over classes (``-Σ y·log q``);
- KL: ``batchmean`` — the sum over classes, averaged over the batch (what ``F.kl_div(...,
  reduction="batchmean")`` computes and what the KL's definition asks for), times τ² so the
  gradient magnitude does not shrink as τ grows (Hinton et al.). ``reduction="mean"`` would
  divide by the class count as well and make λ depend on C.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def soft_cross_entropy(logits: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy against a target distribution ``[B, C]`` (mixed labels), batch mean.

    ``label_smoothing`` ε mixes the target with the uniform distribution: ``(1-ε)·y + ε/C``.
    """
    if label_smoothing:
        target = target * (1.0 - label_smoothing) + label_smoothing / target.shape[-1]
    return -(target * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


def distillation_kl(student_logits: Tensor, teacher_probs: Tensor, tau: float) -> Tensor:
    """``τ²·KL(p_teacher ‖ softmax(z_student/τ))`` with ``batchmean`` reduction.

    ``teacher_probs`` are the teacher's probabilities *already at temperature τ* (for stored
    logits: ``civt_pipe.stores.topk.dense_target(..., tau=τ)``). Zero-probability classes add
    nothing (``0·log 0 = 0``).
    """
    log_q = F.log_softmax(student_logits.float() / tau, dim=-1)
    p = teacher_probs.float()
    kl = (torch.xlogy(p, p) - p * log_q).sum(dim=-1).mean()
    return kl * (tau * tau)


def hard_distillation_ce(
    student_logits: Tensor, teacher_classes: Tensor, label_smoothing: float = 0.0
) -> Tensor:
    """Cross-entropy of ``student_logits`` ``[B, C]`` against the teacher's arg-max classes
    ``[B]`` (int), batch mean; ``label_smoothing`` ε as in :func:`soft_cross_entropy`."""
    return F.cross_entropy(
        student_logits.float(), teacher_classes.long(), label_smoothing=label_smoothing
    )


@dataclass(frozen=True, slots=True)
class CivTLoss:
    """The loss and its parts (for logging)."""

    total: Tensor
    cls: Tensor
    kd: dict[str, Tensor]


def _per_teacher(
    value: float | Mapping[str, float] | None, names: Iterable[str]
) -> dict[str, float]:
    """A per-teacher setting as a mapping: None (every teacher at its default), one value for
    every teacher, or a mapping as given."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    return dict.fromkeys(names, float(value))


def civt_loss(
    outputs: Tensor | Mapping[str, Tensor],
    label_target: Tensor,
    teacher_targets: Mapping[str, Tensor],
    *,
    lambda_cls: float = 1.0,
    lambdas: float | Mapping[str, float] | None = None,
    taus: float | Mapping[str, float] | None = None,
    label_smoothing: float = 0.0,
    hard: Collection[str] = (),
    distill_smoothing: float = 0.0,
) -> CivTLoss:
    """Paper Eq. 5 on one batch, with DeiT's hard distillation for the teachers in ``hard``.

    train-student's loss, and the public ``civt_pipe.distillation_loss`` (docs/api.md).

    Args:
        outputs: the student's logits per token: ``"cls"`` plus one entry per teacher name;
            or one tensor ``[B, C]`` (a single-head model such as a timm or torchvision
            classifier), which the class term and every teacher's term then all read.
        label_target: ground-truth distribution ``[B, C]`` (the λ-mix of both labels for a
            mixed view, a one-hot otherwise).
        teacher_targets: per teacher, its distribution ``[B, C]`` at that teacher's τ; for a
            teacher in ``hard``, its arg-max class ``[B]`` (int) instead.
        lambda_cls: λ0, the weight of the class-token cross-entropy.
        lambdas: λt per teacher (default 1), or one λ for every teacher.
        taus: τt per soft teacher (default 1), or one τ for every teacher; only the τ² factor
            is applied here, the student's logits are divided by τt inside
            :func:`distillation_kl`.
        label_smoothing: ε for the class-token cross-entropy.
        hard: the teachers distilled hard (:func:`hard_distillation_ce`).
        distill_smoothing: ε for the hard teachers' cross-entropy.
    """
    if isinstance(outputs, Tensor):
        outputs = {"cls": outputs, **dict.fromkeys(teacher_targets, outputs)}
    lambdas = _per_teacher(lambdas, teacher_targets)
    taus = _per_teacher(taus, teacher_targets)
    missing = [name for name in teacher_targets if name not in outputs]
    if missing:
        raise ValueError(
            f"the student has no head for teacher(s) {missing}; heads: {sorted(outputs)}"
        )
    cls = soft_cross_entropy(outputs["cls"], label_target, label_smoothing)
    kd = {
        name: hard_distillation_ce(outputs[name], target, distill_smoothing)
        if name in hard
        else distillation_kl(outputs[name], target, taus.get(name, 1.0))
        for name, target in teacher_targets.items()
    }
    total = lambda_cls * cls
    for name, term in kd.items():
        total = total + lambdas.get(name, 1.0) * term
    return CivTLoss(total=total, cls=cls, kd=kd)
