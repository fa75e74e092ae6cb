"""Online baseline: the teachers run live inside every training step (what the Co-advise code does).

Stage two normally reads the teachers' logits from the store. For comparison (and for data too
small to bother storing), ``train-student --teacher NAME=ARCH:CKPT ...`` without ``--store``
loads the teachers here and turns their logits on the very same kind of views into the same
target structure the store path builds: per teacher a dense distribution ``softmax(z / τ)``
``[B, C]`` (the store path gets it from ``stores.topk.dense_target``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..models.teachers import TeacherSpec, load_teachers
from ..runtime.errors import UserError


class OnlineTeachers(NamedTuple):
    """Teachers loaded for online distillation."""

    models: dict[str, nn.Module]
    """By name, in the order given; frozen, eval mode."""
    image_size: int
    """Their common input size."""
    checkpoint_sha256: dict[str, str]
    """Digest of each teacher's checkpoint file (what a resumed run must see again)."""
    archs: dict[str, str]
    """Each teacher's registry architecture (what ``--token-mode aligned`` reads roles from)."""


def load_online_teachers(
    specs: Sequence[str],
    device: torch.device,
    *,
    num_classes: int,
    in_chans: int,
    image_size: int | None = None,
) -> OnlineTeachers:
    """Load ``NAME=ARCH:CKPT`` teachers exactly as ``dump-logits`` does (frozen, eval mode)."""
    parsed = [TeacherSpec.parse(s) for s in specs]
    names = [t.name for t in parsed]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"teacher name {dup[0]!r} is given twice; names must be distinct")
    loaded = load_teachers(
        parsed, device, num_classes=num_classes, channels=in_chans, image_size=image_size
    )
    teachers: dict[str, nn.Module] = {}
    for teacher in loaded:
        for p in teacher.model.parameters():
            p.requires_grad_(False)
        teachers[teacher.info.name] = teacher.model
    return OnlineTeachers(
        models=teachers,
        image_size=loaded[0].image_size,
        checkpoint_sha256={t.info.name: t.info.checkpoint_sha256 for t in loaded},
        archs={t.info.name: t.info.arch for t in loaded},
    )


@torch.no_grad()
def teacher_probs(
    teachers: Mapping[str, nn.Module],
    images: Tensor,
    taus: Mapping[str, float],
    hard: Collection[str] = (),
) -> dict[str, Tensor]:
    """Per teacher ``softmax(z / τ)`` on ``images`` (float32 ``[B, C]``), as the loss expects;
    for a teacher in ``hard``, the arg-max class of its live logits (int64 ``[B]``)."""
    out: dict[str, Tensor] = {}
    for name, model in teachers.items():
        logits = model(images).float()
        if name in hard:
            out[name] = logits.argmax(dim=-1)
        else:
            out[name] = torch.softmax(logits / taus.get(name, 1.0), dim=-1)
    return out
