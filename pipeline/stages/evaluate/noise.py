"""``evaluate --noise``: the paper's robustness check (Liu et al., ACCV 2022) on a noisy copy of
the data, drawn on the fly."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class GaussianNoise(nn.Module):
    """``model(clip(x + N(0, std²), 0, 1))``: noise on the raw images in [0, 1], before the
    model's own normalization, so one ``std`` means the same for every model.

    One generator seeded by ``seed`` draws the noise batch after batch, so the same seed, batch
    size and process count give the same noisy copy of the data.
    """

    def __init__(self, model: nn.Module, *, std: float, seed: int) -> None:
        super().__init__()
        self.model = model
        self.std = std
        self.seed = seed
        self._generator: torch.Generator | None = None

    def forward(self, x: Tensor) -> Any:
        if self._generator is None or self._generator.device != x.device:
            self._generator = torch.Generator(device=x.device).manual_seed(self.seed)
        noise = torch.randn(x.shape, generator=self._generator, device=x.device) * self.std
        return self.model((x + noise).clamp_(0.0, 1.0))
