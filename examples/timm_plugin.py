"""civt-pipe stores in timm's own ``train.py``: its training loader and its loss.

timm's training loop calls ``loss_fn(model(input), target)`` and moves ``target`` with
``.to(device)``, so the store's targets travel packed in one tensor: :class:`StoreLoader`
yields ``(input, target)`` with ``target`` float32 ``[B, 1 + T, C]`` (row 0 the label target,
row ``1 + i`` teacher ``i``'s distribution at τ), and :class:`StoreLoss` unpacks it into
``civt_pipe.distillation_loss``, train-student's loss. The changes to ``train.py`` are in
``examples/timm_recipe.md``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

import civt_pipe


class StoreLoader:
    """``dataset_train`` and ``loader_train`` of timm's ``train.py`` at once.

    Args:
        shards, store: the shards and the store (as for ``civt_pipe.ReplayedViews``).
        batch_size: images per step and rank (timm's ``--batch-size``).
        mean, std: the normalization timm evaluates with (``data_config['mean']``/``['std']``);
            None: the shards' own statistics.
        device: where batches go (timm's ``device``).
        tau: the distillation temperature of every teacher (train-student's ``--tau``).
        **options: any other ``ReplayedViews`` argument (``workers``, ``views``, ``topk``...).
    """

    mixup_enabled = False  # timm reads it with --mixup-off-epoch; the store's views are mixed

    def __init__(
        self,
        shards: str | os.PathLike[str],
        store: str | os.PathLike[str],
        *,
        batch_size: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        device: str | torch.device = "cpu",
        tau: float = 1.0,
        **options: Any,
    ) -> None:
        self.views = civt_pipe.ReplayedViews(shards, store, batch_size=batch_size, **options)
        self.teachers = list(self.views.teachers)
        self.tau = tau
        self.device = torch.device(device)
        mean, std = mean or self.views.mean, std or self.views.std
        if not len(mean) == len(std) == self.views.channels:
            raise ValueError(
                f"the store's views have {self.views.channels} channel(s) but mean/std give "
                f"{len(mean)}/{len(std)} values: pass timm --mean/--std with one per channel"
            )
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    def set_epoch(self, epoch: int) -> None:
        """timm's ``train.py`` calls it before each epoch: epoch ``e`` replays view ``e mod V``."""
        self.views.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.views)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        classes = self.views.num_classes
        for batch in self.views:
            images = (batch.images - self.mean) / self.std
            rows = [batch.label_targets]
            for name in self.teachers:
                rows.append(
                    civt_pipe.dense_targets(batch.teachers[name], self.tau, num_classes=classes)
                )
            target = torch.stack(rows, dim=1)
            yield images.to(self.device), target.to(self.device)


class StoreLoss(nn.Module):
    """timm's ``train_loss_fn``: ``civt_pipe.distillation_loss`` on :class:`StoreLoader`'s
    packed targets, for a single-head model (every term reads its logits).

    ``tau`` must be the loader's; ``lambda_kd``, ``lambda_cls`` and ``label_smoothing`` are
    train-student's ``--lambda``, ``--lambda-cls`` and ``--label-smoothing``.
    """

    def __init__(
        self,
        teachers: Sequence[str],
        *,
        tau: float = 1.0,
        lambda_kd: float = 1.0,
        lambda_cls: float = 1.0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.teachers = list(teachers)
        self.tau = tau
        self.lambda_kd = lambda_kd
        self.lambda_cls = lambda_cls
        self.label_smoothing = label_smoothing

    def forward(self, output: Tensor, target: Tensor) -> Tensor:
        teachers = {name: target[:, 1 + i] for i, name in enumerate(self.teachers)}
        return civt_pipe.distillation_loss(
            output,
            target[:, 0],
            teachers,
            taus=self.tau,
            lambdas=self.lambda_kd,
            lambda_cls=self.lambda_cls,
            label_smoothing=self.label_smoothing,
        ).total
