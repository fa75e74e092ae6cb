"""Top-k logits with the full log-sum-exp, and the dense target they stand for. Pure torch.

Keeping ``lse = logsumexp(all C logits)`` next to the top-k values makes the top-k
probabilities ``exp(value - lse)`` exact; only how the leftover mass ``1 - Σ top-k`` is spread
over the other ``C - k`` classes is approximated (uniformly).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from civt_pipe.stores.schema import INT16_MAX_CLASSES


def _round_down_half(x: torch.Tensor) -> torch.Tensor:
    """float32 → float16 rounding toward −∞.

    Rounding down keeps every stored value ≤ the true logit, so ``lse ≥ values[..., 0]`` and
    ``Σ exp(values − lse) ≤ 1`` hold exactly: the leftover mass is never negative. Rounding
    down is monotone, so a descending row stays descending.
    """
    finfo = torch.finfo(torch.float16)
    half = x.clamp(min=finfo.min, max=finfo.max).to(torch.float16)
    too_big = half.to(torch.float32) > x
    if bool(too_big.any()):
        lower = torch.nextafter(half, torch.full_like(half, float("-inf")))
        half = torch.where(too_big, lower, half)
    return half


@dataclass(frozen=True)
class TopKLogits:
    """The k largest logits of each row, sorted descending, plus the row's log-sum-exp.

    Shapes: ``values`` float16 ``[..., k]``, ``indices`` int16 (int32 when C > 32767)
    ``[..., k]``, ``lse`` float32 ``[...]``.
    """

    values: torch.Tensor
    indices: torch.Tensor
    lse: torch.Tensor

    def __post_init__(self) -> None:
        if self.values.shape != self.indices.shape:
            raise ValueError(
                f"top-k values {tuple(self.values.shape)} and indices "
                f"{tuple(self.indices.shape)} differ in shape"
            )
        if self.values.shape[:-1] != self.lse.shape:
            raise ValueError(
                f"lse shape {tuple(self.lse.shape)} does not match values "
                f"{tuple(self.values.shape)} without the last axis"
            )

    @property
    def k(self) -> int:
        """Number of kept logits per row."""
        return int(self.values.shape[-1])

    @classmethod
    def from_logits(cls, logits: torch.Tensor, k: int) -> TopKLogits:
        """Keep the top ``k`` of ``logits [..., C]``; ``lse`` is computed from all C in float32.

        Raises ``ValueError`` when ``k`` is not in ``[1, C]`` or a logit is NaN/inf.
        """
        num_classes = int(logits.shape[-1])
        if not 1 <= k <= num_classes:
            raise ValueError(f"top-k {k} must be between 1 and the class count {num_classes}")
        full = logits.detach().to(torch.float32)
        if not bool(torch.isfinite(full).all()):
            raise ValueError("teacher logits contain NaN or infinity")
        top_values, top_indices = torch.topk(full, k, dim=-1, largest=True, sorted=True)
        idx_dtype = torch.int16 if num_classes <= INT16_MAX_CLASSES else torch.int32
        return cls(
            values=_round_down_half(top_values),
            indices=top_indices.to(idx_dtype),
            lse=torch.logsumexp(full, dim=-1),
        )


def leftover_mass(values: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """``1 − Σ exp(values − lse)``: the probability outside the top k, clamped at 0 (float64)."""
    kept = torch.exp(values.to(torch.float64) - lse.to(torch.float64).unsqueeze(-1)).sum(-1)
    return (1.0 - kept).clamp(min=0.0)


def dense_target(
    values: torch.Tensor,
    indices: torch.Tensor,
    lse: torch.Tensor,
    num_classes: int,
    tau: float = 1.0,
) -> torch.Tensor:
    """The dense teacher distribution ``[..., C]`` (float32) at temperature ``tau``.

    At ``tau = 1`` the k kept classes get their exact probability ``exp(value − lse)`` and the
    leftover mass ``r = 1 − Σ top-k`` is spread uniformly over the other ``C − k`` classes.

    At ``tau ≠ 1`` the unknown ``C − k`` logits are treated as all equal to the value
    ``u = lse + log(r / (C − k))`` that reproduces the leftover mass at ``tau = 1``, and the
    result is ``softmax(z / tau)`` of the completed logit vector. This is an approximation: the
    real tail logits differ from each other, so the tail mass at ``tau ≠ 1`` is only
    estimated (exact when ``k = C`` or when the tail really is flat). At ``tau = 1`` the two
    descriptions coincide. Every row sums to 1.
    """
    if tau <= 0:
        raise ValueError(f"temperature must be positive, got {tau}")
    k = int(values.shape[-1])
    if k > num_classes:
        raise ValueError(f"top-k {k} is larger than the class count {num_classes}")
    vals = values.to(torch.float64)
    lse64 = lse.to(torch.float64)
    others = num_classes - k
    if others > 0:
        tail = leftover_mass(values, lse)
        # log(0) = -inf: an empty tail gets probability 0 at every temperature.
        filler = lse64 + torch.log(tail) - torch.log(torch.tensor(float(others), dtype=vals.dtype))
        full = filler.unsqueeze(-1).expand(*vals.shape[:-1], num_classes).clone()
    else:
        full = torch.empty(*vals.shape[:-1], num_classes, dtype=vals.dtype)
    full.scatter_(-1, indices.to(torch.int64), vals)
    return torch.softmax(full / tau, dim=-1).to(torch.float32)


def target_entropy(values: torch.Tensor, lse: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Entropy (nats, float64) of the τ=1 dense target, computed in O(k) without building it."""
    vals = values.to(torch.float64)
    logp = vals - lse.to(torch.float64).unsqueeze(-1)
    p = torch.exp(logp)
    entropy = -(p * logp).sum(-1)
    others = num_classes - int(values.shape[-1])
    if others > 0:
        tail = leftover_mass(values, lse)
        share = tail / others
        # 0·log 0 = 0: an empty tail adds nothing.
        tail_term = torch.where(tail > 0, -tail * torch.log(share.clamp(min=1e-300)), 0.0)
        entropy = entropy + tail_term
    return entropy
