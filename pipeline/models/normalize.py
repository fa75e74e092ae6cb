"""Per-model input normalization, and the wrapper every built model comes in.

Models take images in [0, 1]. Each one carries its own ``mean``/``std`` as buffers in its state
dict, so one augmented view can be fed to teachers trained with different normalizations, and a
checkpoint needs nothing outside itself to be used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..runtime.errors import UserError

IMAGENET_MEAN: tuple[float, ...] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, ...] = (0.229, 0.224, 0.225)


def default_stats(
    in_chans: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Resolve ``mean``/``std`` for ``in_chans`` channels, checking what the user gave.

    Unset statistics default to ImageNet's for 3 channels, their channel average for 1 channel,
    and 0.5 / 0.25 otherwise.
    """
    if in_chans < 1:
        raise UserError(f"in_chans must be at least 1, got {in_chans}")
    if mean is None:
        if in_chans == 3:
            mean = IMAGENET_MEAN
        elif in_chans == 1:
            mean = (sum(IMAGENET_MEAN) / 3,)
        else:
            mean = (0.5,) * in_chans
    if std is None:
        if in_chans == 3:
            std = IMAGENET_STD
        elif in_chans == 1:
            std = (sum(IMAGENET_STD) / 3,)
        else:
            std = (0.25,) * in_chans
    mean_t, std_t = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean_t) != in_chans or len(std_t) != in_chans:
        raise UserError(
            f"normalization has {len(mean_t)} mean and {len(std_t)} std values "
            f"for {in_chans} input channels"
        )
    if any(s <= 0 for s in std_t):
        raise UserError(f"normalization std must be positive, got {list(std_t)}")
    return mean_t, std_t


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; ``mean`` and ``std`` are saved in the state dict."""

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer(
            "mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        )
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"channels={self.mean.shape[1]}"


class NormalizedModel(nn.Module):
    """``body(normalize(x))``: the form every registry model is built in.

    It also remembers how it was built (``arch``, ``kind``, ``model_args``) so a checkpoint can
    rebuild it. Teachers' bodies return logits ``[B, C]``; students' return ``dict[str, Tensor]``.

    Args:
        normalize: the first layer.
        body: the network proper.
        arch: registry name.
        kind: ``"teacher"`` or ``"student"``.
        model_args: keyword arguments that rebuild the model through the registry.
    """

    def __init__(
        self,
        normalize: Normalize,
        body: nn.Module,
        *,
        arch: str,
        kind: str,
        model_args: dict[str, Any],
    ) -> None:
        super().__init__()
        self.normalize = normalize
        self.body = body
        self.arch = arch
        self.kind = kind
        self.model_args = dict(model_args)

    def forward(self, x: Tensor) -> Any:
        return self.body(self.normalize(x))
