"""The one rule for a distillation temperature τ, in every trainer that takes one.

The KL term is scaled by τ² (Hinton et al.), so its weight falls with the square of τ: at
τ = 0.1 it is a hundredth of its weight at τ = 1, and ``--tau 1e-30`` made it exactly zero in
float32 (τ² underflows), silently switching distillation off. A τ that small sharpens every
target to its arg-max, which ``train-student --distill hard`` already says outright. So τ below
:data:`MIN_TAU` is refused in one line, naming the option. Torch-free: the configs check it.
"""

from __future__ import annotations

from ..runtime.errors import UserError

MIN_TAU = 0.1
"""Smallest accepted τ: the KL keeps at least 1 % of its τ = 1 weight (τ² ≥ 0.01)."""


def check_temperature(flag: str, value: float) -> None:
    """Raise :class:`UserError` unless ``MIN_TAU <= value`` (``flag`` names the option)."""
    if not value >= MIN_TAU:
        raise UserError(
            f"{flag} must be at least {MIN_TAU:g}, got {value:g}: the KL term is scaled by τ², "
            "so a smaller τ switches distillation off (for the teacher's arg-max use "
            "--distill hard)"
        )
