"""``civt_pipe.dense_targets``: a teacher's stored top-k as the distribution a loss reads."""

from __future__ import annotations

from torch import Tensor

from ...stores.topk import TopKLogits


def dense_targets(topk: TopKLogits, temperature: float = 1.0, *, num_classes: int) -> Tensor:
    """The teacher distribution ``[..., num_classes]`` (float32, rows sum to 1) at
    ``temperature`` τ, as train-student builds it for each soft teacher (``--tau``).

    The k stored classes keep their probabilities; the mass outside them is spread evenly over
    the other classes (at τ ≠ 1 the tail is estimated: docs/store-format.md). Pass the result,
    with the same τ, to ``distillation_loss(..., taus=τ)``.
    """
    return topk.dense(num_classes, temperature)
