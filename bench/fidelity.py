"""How faithful is a top-k store? KL between a teacher's full distribution and its reconstruction.

Pure torch, no I/O. The reconstruction is exactly what stage two trains against:
``stores.topk.TopKLogits.from_logits`` (float16 top-k log-probabilities rounded down, float32
lse over all C logits) followed by ``stores.topk.dense_target`` (exact top-k probabilities,
leftover mass spread uniformly over the other C − k classes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from civt_pipe.stores.topk import TopKLogits, dense_target, leftover_mass

# dense_target returns float32: a reconstructed probability below float32's smallest normal
# number is 0, and log 0 would make the KL infinite for a class whose true mass is just as
# negligible. Clamping there changes the KL by at most p·log(p/tiny) for p ≈ tiny, i.e. nothing.
_TINY = float(torch.finfo(torch.float32).tiny)


def topk_kl(logits: Tensor, k: int) -> Tensor:
    """Per-row ``KL(softmax(logits) ‖ dense_target(top-k of logits))`` in nats (float64).

    ``logits`` is ``[..., C]`` float (the teacher's full output). ``k = C`` measures only the
    float16 rounding of the stored log-probabilities.
    """
    num_classes = int(logits.shape[-1])
    top = TopKLogits.from_logits(logits, k)
    recon = dense_target(top.logprobs, top.indices, num_classes, tau=1.0).to(torch.float64)
    log_p = torch.log_softmax(logits.to(torch.float64), dim=-1)
    p = log_p.exp()
    return (p * (log_p - recon.clamp(min=_TINY).log())).sum(-1)


@dataclass(frozen=True, slots=True)
class FidelityRow:
    """Fidelity of one k on one set of logits."""

    k: int
    mean_kl: float
    """Mean over rows of KL(full ‖ reconstruction), nats."""
    max_kl: float
    mean_leftover: float
    """Mean probability mass outside the top k (what the reconstruction spreads uniformly)."""

    def to_dict(self) -> dict[str, float | int]:
        return {
            "k": self.k,
            "mean_kl": self.mean_kl,
            "max_kl": self.max_kl,
            "mean_leftover_mass": self.mean_leftover,
        }


def fidelity_table(logits: Tensor, ks: list[int]) -> list[FidelityRow]:
    """:func:`topk_kl` summarized for every ``k`` in ``ks`` (each capped at the class count)."""
    num_classes = int(logits.shape[-1])
    rows = []
    for k in ks:
        kk = min(k, num_classes)
        kl = topk_kl(logits, kk)
        top = TopKLogits.from_logits(logits, kk)
        rows.append(
            FidelityRow(
                k=kk,
                mean_kl=float(kl.mean()),
                max_kl=float(kl.max()),
                mean_leftover=float(leftover_mass(top.logprobs).mean()),
            )
        )
    return rows


def distribution_stats(logits: Tensor) -> dict[str, float]:
    """Mean top-1 probability, entropy (nats) and top-5 mass: how peaked the logits are."""
    log_p = torch.log_softmax(logits.to(torch.float64), dim=-1)
    p = log_p.exp()
    k5 = min(5, int(logits.shape[-1]))
    return {
        "mean_top1_prob": float(p.max(-1).values.mean()),
        "mean_entropy_nats": float(-(p * log_p).sum(-1).mean()),
        "mean_top5_mass": float(p.topk(k5, dim=-1).values.sum(-1).mean()),
    }


def synthetic_logits(
    n: int,
    num_classes: int,
    *,
    seed: int,
    true_boost: tuple[float, float] = (8.0, 14.0),
    neighbours: int = 6,
    neighbour_boost: tuple[float, float] = (5.0, 10.0),
) -> tuple[Tensor, Tensor]:
    """Teacher-like logits ``[n, C]`` and their labels ``[n]``, from a seeded generator.

    A trained classifier is confident but not certain: its logits are a noise floor (here
    N(0, 1) for every class), a clear winner (the label, + U(true_boost)) and a handful of
    plausible look-alikes (+ U(neighbour_boost) on ``neighbours`` random classes). With the
    defaults at C = 1000 the mean top-1 probability is ≈ 0.69 and the entropy ≈ 1.0 nat, close to
    an ImageNet CNN's softmax on augmented views; :func:`distribution_stats` reports the values.
    """
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, num_classes, generator=g)
    rows = torch.arange(n)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    z[rows, labels] += torch.empty(n).uniform_(*true_boost, generator=g)
    for _ in range(neighbours):
        other = torch.randint(0, num_classes, (n,), generator=g)
        z[rows, other] += torch.empty(n).uniform_(*neighbour_boost, generator=g)
    return z, labels
