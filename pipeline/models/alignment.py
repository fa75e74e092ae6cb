"""Which teacher is the convolution and which the involution one, for ``--token-mode aligned``.

Co-advise's token inductive-bias alignment pairs the student's convolution-stem token with the
convolution teacher and its involution-stem token with the involution teacher. The roles come
from the teachers' architectures (each teacher preset registers its inductive bias, see
:func:`.registry.register_model`; a ``timm:MODEL`` teacher's comes from the declared table of
timm families in :mod:`.zoo_timm`), overridden per teacher by ``--align NAME=conv|inv``. A timm
transformer is refused: it is neither.

No torch at import time (stage configs import :data:`AlignRole`); the registry is consulted
inside :func:`resolve_alignment`.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..runtime.errors import UserError
from .token_mode import ALIGN_ROLES, AlignRole, check_aligned_teacher_count, check_alignment

__all__ = ["ALIGN_ROLES", "AlignRole", "resolve_alignment"]


def resolve_alignment(
    teacher_archs: Mapping[str, str], explicit: Mapping[str, str]
) -> dict[str, AlignRole]:
    """Every teacher's alignment role, from its architecture unless ``explicit`` names it.

    Args:
        teacher_archs: teacher name -> registry architecture (e.g. the store's teachers).
        explicit: teacher name -> ``"conv"`` or ``"inv"`` (``--align``); wins over the arch.

    Returns:
        ``{name: role}`` for every teacher, exactly one ``"conv"`` and one ``"inv"``.

    Raises:
        UserError: an unknown teacher or role in ``explicit``, a teacher whose architecture has
            no known inductive bias and no explicit role, or not exactly one teacher of each
            role (one line each, naming what to fix).
    """
    from . import zoo_timm
    from .factory import PRESETS  # imports every model file, so every preset is registered

    names = list(teacher_archs)
    for name, role in explicit.items():
        if name not in teacher_archs:
            known = ", ".join(names) or "none"
            raise UserError(f"--align names unknown teacher {name!r}; the teachers are {known}")
        if role not in ALIGN_ROLES:
            raise UserError(f"--align {name}={role}: the role must be conv or inv")
    check_aligned_teacher_count(names)
    roles: dict[str, AlignRole] = {}
    for name, arch in teacher_archs.items():
        bias = PRESETS[arch].bias if arch in PRESETS else None
        if zoo_timm.is_timm(arch):
            family = zoo_timm.family(arch)
            if family == "transformer":
                raise UserError(
                    f"teacher {name!r} ({arch}) is a transformer; token mode 'aligned' pairs a "
                    "convolution and an involution teacher"
                )
            bias = "conv" if family == "conv" else None
        given = explicit.get(name)
        if given is not None:
            roles[name] = "conv" if given == "conv" else "inv"
        elif bias is not None:
            roles[name] = bias
        else:
            raise UserError(
                f"teacher {name!r} ({arch}) has no known inductive bias; "
                f"use --align {name}=conv|inv"
            )
    check_alignment(names, roles)
    return roles
