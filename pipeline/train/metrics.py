"""Top-k accuracy as exact counts, so results can be summed over batches, workers and ranks.

Counts (not running means) are what survive a ``torch.distributed.all_reduce`` unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

TOPK: tuple[int, ...] = (1, 5)


def topk_correct(
    logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = TOPK
) -> list[int]:
    """How many rows of ``logits [B, C]`` have their label among the top ``k`` classes, per k.

    ``k`` larger than the class count is clipped to it (top-5 of a 3-class problem is 100 %).
    """
    if logits.ndim != 2:
        raise ValueError(f"expected logits of shape [batch, classes], got {tuple(logits.shape)}")
    if labels.shape != logits.shape[:1]:
        raise ValueError(
            f"labels of shape {tuple(labels.shape)} do not match {logits.shape[0]} rows of logits"
        )
    if logits.shape[0] == 0:
        return [0 for _ in ks]
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices  # [B, kmax], best first
    hits = top.eq(labels.to(top.device).unsqueeze(1))  # at most one True per row
    return [int(hits[:, : min(k, kmax)].any(dim=1).sum().item()) for k in ks]


@dataclass(slots=True)
class TopKCounter:
    """Running top-1/top-5 hit counts per named head, plus the number of samples seen."""

    ks: tuple[int, ...] = TOPK
    num_samples: int = 0
    hits: dict[str, list[int]] = field(default_factory=dict)

    def update(self, outputs: dict[str, torch.Tensor], labels: torch.Tensor) -> None:
        """Count one batch: ``outputs`` maps head name to logits ``[B, C]`` for the same rows."""
        for name, logits in outputs.items():
            counts = topk_correct(logits.detach(), labels, self.ks)
            previous = self.hits.setdefault(name, [0] * len(self.ks))
            self.hits[name] = [a + b for a, b in zip(previous, counts, strict=True)]
        self.num_samples += int(labels.shape[0])

    def all_reduce(self, device: torch.device | None = None) -> None:
        """Sum the counts over all ranks (every rank must hold the same head names).

        ``device`` is where the process group communicates: the GPU under nccl, CPU under gloo.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return
        names = sorted(self.hits)
        flat = [self.num_samples] + [c for name in names for c in self.hits[name]]
        tensor = torch.tensor(flat, dtype=torch.int64, device=device)
        dist.all_reduce(tensor)
        values = [int(v) for v in tensor.tolist()]
        self.num_samples = values[0]
        width = len(self.ks)
        for i, name in enumerate(names):
            self.hits[name] = values[1 + i * width : 1 + (i + 1) * width]

    def accuracy(self, name: str) -> dict[str, float]:
        """``{"top1": ..., "top5": ...}`` for one head, as fractions in [0, 1]."""
        counts = self.hits[name]
        denom = max(self.num_samples, 1)
        return {f"top{k}": c / denom for k, c in zip(self.ks, counts, strict=True)}

    def result(self) -> dict[str, dict[str, float]]:
        """Accuracy of every head, in the order heads were first seen."""
        return {name: self.accuracy(name) for name in self.hits}
