"""The student token modes and alignment roles, defined once (models, configs and the CLI import
them).

How the student's per-teacher outputs are produced:

- ``"per-teacher"`` (Co-advise, arXiv v1): one learned distillation token and head per teacher;
  with one teacher this is DeiT;
- ``"aligned"`` (Co-advise, CVPR version: token inductive-bias alignment): exactly two teachers,
  one convolution and one involution; the patch tokens come from a convolution stem plus an
  involution stem, and each teacher's token is the spatial mean of its own stem's grid
  (computed, not learned), read out by one head per token;
- ``"shared"``: one distillation token and head for all teachers, the same tensor under each
  teacher's name. At equal τ its KL terms add up to the KL to the *average* teacher, the
  ensemble target of Habib et al. (2023). This is **not** the paper's Table 6 "1 token";
- ``"cls"`` (the paper's Table 6 "1 token"): conventional multi-teacher KD: no distillation
  token; the class token's head fits the labels *and* every teacher (each teacher's output is the
  class logits tensor itself);
- ``"none"``: no distillation token, only ``"cls"`` (trained on the labels alone).

No torch here: the command line imports it to offer the choices without loading torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, get_args

from ..runtime.errors import UserError

TokenMode = Literal["per-teacher", "aligned", "shared", "cls", "none"]
"""A student's token mode (see the module docstring)."""

TOKEN_MODES: tuple[TokenMode, ...] = get_args(TokenMode)
"""Every token mode, in the order the help text lists them."""

AlignRole = Literal["conv", "inv"]
"""A teacher's inductive bias in ``aligned`` mode: convolution or involution."""

ALIGN_ROLES: tuple[AlignRole, ...] = get_args(AlignRole)
"""Every alignment role."""


def check_aligned_teacher_count(teacher_names: Sequence[str]) -> None:
    """Raise :class:`UserError` unless there are exactly two teachers (``aligned`` mode)."""
    if len(teacher_names) != 2:
        got = f"{len(teacher_names)}: {', '.join(teacher_names)}" if teacher_names else "none"
        raise UserError(
            "token mode 'aligned' needs exactly two teachers (one convolution, one involution); "
            f"got {got}"
        )


def check_alignment(teacher_names: Sequence[str], align: Mapping[str, str]) -> tuple[str, str]:
    """The ``(conv teacher, inv teacher)`` names of an ``aligned`` student.

    Args:
        teacher_names: the student's teachers.
        align: role (``"conv"`` or ``"inv"``) of every teacher.

    Raises:
        UserError: unless there are exactly two teachers, each with a role, one of each.
    """
    names = list(teacher_names)
    check_aligned_teacher_count(names)
    strays = sorted(set(align) - set(names))
    if strays:
        raise UserError(
            f"alignment names unknown teacher {strays[0]!r}; the teachers are {', '.join(names)}"
        )
    for name in names:
        role = align.get(name)
        if role is None:
            raise UserError(f"teacher {name!r} has no alignment role; use --align {name}=conv|inv")
        if role not in ALIGN_ROLES:
            raise UserError(f"alignment role of {name!r} must be conv or inv, got {role!r}")
    roles = [str(align[name]) for name in names]
    if sorted(roles) != ["conv", "inv"]:
        given = ", ".join(f"{name}={role}" for name, role in zip(names, roles, strict=True))
        raise UserError(
            "aligned needs exactly one convolution and one involution teacher; "
            f"got {given}; use --align NAME=conv|inv"
        )
    conv = names[roles.index("conv")]
    inv = names[roles.index("inv")]
    return conv, inv
