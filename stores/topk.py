"""Top-k log-probabilities with the full log-sum-exp, and the dense target they stand for.

Pure torch. Storing ``log_softmax`` values instead of raw logits keeps them in ``(-∞, 0]``
whatever the scale of the teacher's logits: float16 saturates at 65504 and its step is 1/64
between 16 and 32, so raw logits lost the top class of unstable teachers and ~1.5 % of every
probability at ordinary scales, while a log-probability near 0 (the classes that matter) is
stored to a relative probability error below 1e-3. ``lse = logsumexp(all C logits)`` is kept
in float32 so the raw logits are still ``logprobs + lse``. The top-k probabilities
``exp(logprobs)`` are exact up to that float16 rounding; only how the leftover mass
``1 − Σ top-k`` is spread over the other ``C − k`` classes is approximated (uniformly).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .schema import INT16_MAX_CLASSES


def _round_down_half(x: torch.Tensor) -> torch.Tensor:
    """float32 → float16 rounding toward −∞.

    Rounding down keeps every stored log-probability ≤ the float32 one, so the stored values
    stay ≤ 0 and ``Σ exp(logprobs) ≤ 1`` (up to the float32 rounding of ``log_softmax``, ~1e-7):
    the leftover mass is never negative. Rounding down is monotone, so a descending row stays
    descending. Values below float16's lowest (−65504) become −65504, whose probability is 0 in
    every float format.
    """
    finfo = torch.finfo(torch.float16)
    half = x.clamp(min=finfo.min, max=finfo.max).to(torch.float16)
    too_big = half.to(torch.float32) > x
    if bool(too_big.any()):
        lower = torch.nextafter(half, torch.full_like(half, float("-inf")))
        # Never step below the lowest finite float16 (the clamp already made those values).
        half = torch.where(too_big & (half > finfo.min), lower, half)
    return half


@dataclass(frozen=True)
class TopKLogits:
    """The k largest log-probabilities of each row, sorted descending, plus the row's
    log-sum-exp.

    Shapes: ``logprobs`` float16 ``[..., k]`` (``log_softmax`` values, ≤ 0), ``indices`` int16
    (int32 when C > 32767) ``[..., k]``, ``lse`` float32 ``[...]``. :attr:`values` gives the raw
    logits back.
    """

    logprobs: torch.Tensor
    indices: torch.Tensor
    lse: torch.Tensor

    def __post_init__(self) -> None:
        if self.logprobs.shape != self.indices.shape:
            raise ValueError(
                f"top-k logprobs {tuple(self.logprobs.shape)} and indices "
                f"{tuple(self.indices.shape)} differ in shape"
            )
        if self.logprobs.shape[:-1] != self.lse.shape:
            raise ValueError(
                f"lse shape {tuple(self.lse.shape)} does not match logprobs "
                f"{tuple(self.logprobs.shape)} without the last axis"
            )

    @property
    def k(self) -> int:
        """Number of kept classes per row."""
        return int(self.logprobs.shape[-1])

    @property
    def values(self) -> torch.Tensor:
        """The raw top-k logits, float32 ``[..., k]``: ``logprobs + lse`` (read-only)."""
        return self.logprobs.to(torch.float32) + self.lse.to(torch.float32).unsqueeze(-1)

    def __getitem__(self, rows: int | slice | Sequence[int] | torch.Tensor) -> TopKLogits:
        """The selected rows: ``rows`` indexes the leading (row) axes of all three tensors alike.

        A tensor or list of row numbers gives a copy (as with any tensor indexing); the class
        axis is never indexed.
        """
        return TopKLogits(
            logprobs=self.logprobs[rows], indices=self.indices[rows], lse=self.lse[rows]
        )

    def first(self, k: int) -> TopKLogits:
        """The first ``k`` entries of every row, what a store dumped with top-k ``k`` holds
        (the rows are sorted descending; ``lse`` stays the full log-sum-exp)."""
        if not 1 <= k <= self.k:
            raise ValueError(f"cannot keep {k} of {self.k} top-k entries")
        return TopKLogits(
            logprobs=self.logprobs[..., :k], indices=self.indices[..., :k], lse=self.lse
        )

    def to(self, device: torch.device | str) -> TopKLogits:
        """The same rows on ``device`` (dtypes unchanged)."""
        return TopKLogits(
            logprobs=self.logprobs.to(device),
            indices=self.indices.to(device),
            lse=self.lse.to(device),
        )

    def dense(self, num_classes: int, tau: float = 1.0) -> torch.Tensor:
        """The dense distribution ``[..., C]`` at temperature ``tau`` (see :func:`dense_target`)."""
        return dense_target(self.logprobs, self.indices, num_classes, tau)

    @classmethod
    def stack(cls, parts: Sequence[TopKLogits]) -> TopKLogits:
        """Stack equally shaped parts along a new leading axis (rows of a batch, say)."""
        if not parts:
            raise ValueError("cannot stack zero TopKLogits")
        return cls(
            logprobs=torch.stack([p.logprobs for p in parts]),
            indices=torch.stack([p.indices for p in parts]),
            lse=torch.stack([p.lse for p in parts]),
        )

    @classmethod
    def cat(cls, parts: Sequence[TopKLogits]) -> TopKLogits:
        """Concatenate parts along the leading (row) axis; they must agree on k and dtypes."""
        if not parts:
            raise ValueError("cannot concatenate zero TopKLogits")
        return cls(
            logprobs=torch.cat([p.logprobs for p in parts]),
            indices=torch.cat([p.indices for p in parts]),
            lse=torch.cat([p.lse for p in parts]),
        )

    @classmethod
    def from_logits(cls, logits: torch.Tensor, k: int) -> TopKLogits:
        """Keep the top ``k`` of ``logits [..., C]`` as log-probabilities over all C classes.

        ``log_softmax`` and ``lse`` are computed in float32 from all C logits (shift-invariant,
        so logits of any magnitude are fine); the log-probabilities are rounded down to float16.
        Raises ``ValueError`` when ``k`` is not in ``[1, C]`` or a logit is NaN/inf.
        """
        num_classes = int(logits.shape[-1])
        if not 1 <= k <= num_classes:
            raise ValueError(f"top-k {k} must be between 1 and the class count {num_classes}")
        full = logits.detach().to(torch.float32)
        if not bool(torch.isfinite(full).all()):
            raise ValueError("teacher logits contain NaN or infinity")
        logp = torch.log_softmax(full, dim=-1)
        top_logp, top_indices = torch.topk(logp, k, dim=-1, largest=True, sorted=True)
        idx_dtype = torch.int16 if num_classes <= INT16_MAX_CLASSES else torch.int32
        return cls(
            logprobs=_round_down_half(top_logp),
            indices=top_indices.to(idx_dtype),
            lse=torch.logsumexp(full, dim=-1),
        )


def leftover_mass(logprobs: torch.Tensor) -> torch.Tensor:
    """``1 − Σ exp(logprobs)``: the probability outside the top k, clamped at 0 (float64)."""
    kept = torch.exp(logprobs.to(torch.float64)).sum(-1)
    return (1.0 - kept).clamp(min=0.0)


def dense_target(
    logprobs: torch.Tensor,
    indices: torch.Tensor,
    num_classes: int,
    tau: float = 1.0,
) -> torch.Tensor:
    """The dense teacher distribution ``[..., C]`` (float32) at temperature ``tau``.

    At ``tau = 1`` the k kept classes get their stored probability ``exp(logprob)`` exactly and
    the leftover mass ``r = 1 − Σ top-k`` is spread uniformly over the other ``C − k`` classes
    (when ``k = C`` there is no other class and the kept probabilities are renormalized, which
    only undoes the float16 round-down).

    At ``tau ≠ 1`` the unknown ``C − k`` log-probabilities are treated as all equal to the
    value ``log(r / (C − k))`` that reproduces the leftover mass at ``tau = 1``, and the result
    is ``softmax(z / tau)`` of the completed vector (softmax ignores the per-row shift ``lse``,
    so log-probabilities and raw logits give the same target). This is an approximation: the
    real tail logits differ from each other, so the tail mass at ``tau ≠ 1`` is only estimated
    (exact when ``k = C`` or when the tail really is flat). Every row sums to 1.
    """
    if tau <= 0:
        raise ValueError(f"temperature must be positive, got {tau}")
    k = int(logprobs.shape[-1])
    if k > num_classes:
        raise ValueError(f"top-k {k} is larger than the class count {num_classes}")
    logp = logprobs.to(torch.float64)
    idx = indices.to(torch.int64)
    others = num_classes - k
    tail = leftover_mass(logprobs) if others > 0 else torch.zeros(logp.shape[:-1], dtype=logp.dtype)
    if tau == 1.0:
        kept = torch.exp(logp)
        if others == 0:
            # No tail to take the mass the round-down removed: renormalize instead.
            kept = kept / kept.sum(-1, keepdim=True)
        share = tail / others if others > 0 else tail
        full = share.unsqueeze(-1).expand(*logp.shape[:-1], num_classes).clone()
        full.scatter_(-1, idx, kept)
        return full.to(torch.float32)
    # log(0) = -inf: an empty tail gets probability 0 at every temperature.
    filler = torch.log(tail) - (torch.log(torch.tensor(float(others))) if others > 0 else 0.0)
    full = filler.unsqueeze(-1).expand(*logp.shape[:-1], num_classes).clone()
    full.scatter_(-1, idx, logp)
    return torch.softmax(full / tau, dim=-1).to(torch.float32)


def target_entropy(logprobs: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Entropy (nats, float64) of the τ=1 dense target, computed in O(k) without building it."""
    logp = logprobs.to(torch.float64)
    p = torch.exp(logp)
    entropy = -(p * logp).sum(-1)
    others = num_classes - int(logprobs.shape[-1])
    if others > 0:
        tail = leftover_mass(logprobs)
        share = tail / others
        # 0·log 0 = 0: an empty tail adds nothing.
        tail_term = torch.where(tail > 0, -tail * torch.log(share.clamp(min=1e-300)), 0.0)
        entropy = entropy + tail_term
    return entropy
