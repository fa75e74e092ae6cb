"""``cnn-nano`` and ``inn-nano``: twin CPU-sized teachers that differ only in the spatial operator.

Both are three-stage residual networks with the same depth and widths; each block is

    spatial op (3×3 convolution | 3×3 involution, carrying the stride) → BN → ReLU
    → 1×1 convolution → BN, plus the (pooled, projected when needed) shortcut → ReLU

so the comparison isolates the inductive bias the Co-advise paper is about: convolution
(spatial-agnostic, channel-specific) against involution (spatial-specific, channel-agnostic).
Under 0.3 M parameters; they train on 16×16 digits on two CPU cores in a minute or two.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from .involution import Involution
from .registry import register_model


class NanoBlock(nn.Module):
    """One residual block; ``spatial`` is ``"conv"`` or ``"involution"``."""

    def __init__(self, cin: int, cout: int, stride: int, spatial: str, kernel_size: int) -> None:
        super().__init__()
        self.spatial: nn.Module
        if spatial == "conv":
            self.spatial = nn.Conv2d(cin, cin, kernel_size, stride, kernel_size // 2, bias=False)
        else:
            self.spatial = Involution(cin, kernel_size, stride)
        self.bn1 = nn.BatchNorm2d(cin)
        self.mix = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            pool: nn.Module = (
                nn.AvgPool2d(stride, stride, ceil_mode=True) if stride > 1 else nn.Identity()
            )
            self.shortcut = nn.Sequential(
                pool, nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.spatial(x)))
        out = self.bn2(self.mix(out))
        return self.relu(out + self.shortcut(x))


class NanoNet(nn.Module):
    """A small residual classifier returning logits ``[B, num_classes]``.

    Args:
        spatial: ``"conv"`` (cnn-nano) or ``"involution"`` (inn-nano).
        num_classes: classifier outputs.
        in_chans: input channels.
        small_input: stride-1 stem without max-pool (images of 64 px or less).
        widths: channels of the three stages.
        blocks: blocks per stage; the first block of stages 2+ halves the resolution.
        kernel_size: spatial extent of the convolution / involution.
    """

    def __init__(
        self,
        spatial: str,
        *,
        num_classes: int,
        in_chans: int = 3,
        small_input: bool = True,
        widths: Sequence[int] = (32, 64, 96),
        blocks: Sequence[int] = (2, 2, 2),
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        if spatial not in ("conv", "involution"):
            raise ValueError(f"spatial must be 'conv' or 'involution', got {spatial!r}")
        stem: list[nn.Module] = [
            nn.Conv2d(in_chans, widths[0], 3, 1 if small_input else 2, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        if not small_input:
            stem.append(nn.MaxPool2d(3, 2, 1))
        self.stem = nn.Sequential(*stem)
        layers: list[nn.Module] = []
        cin = widths[0]
        for i, (width, depth) in enumerate(zip(widths, blocks, strict=True)):
            for j in range(depth):
                layers.append(
                    NanoBlock(cin, width, 2 if i > 0 and j == 0 else 1, spatial, kernel_size)
                )
                cin = width
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled features ``[B, D]``."""
        return self.pool(self.stages(self.stem(x))).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x))


@register_model(
    "cnn-nano", kind="teacher", bias="conv", description="3-stage CNN for CPUs and tiny images"
)
def cnn_nano(*, num_classes: int, in_chans: int, small_input: bool) -> NanoNet:
    """The convolution twin."""
    model_args: dict[str, Any] = dict(widths=(32, 64, 96), blocks=(2, 2, 2), kernel_size=3)
    return NanoNet(
        "conv", num_classes=num_classes, in_chans=in_chans, small_input=small_input, **model_args
    )


@register_model(
    "inn-nano",
    kind="teacher",
    bias="inv",
    description="cnn-nano with involution for convolution",
)
def inn_nano(*, num_classes: int, in_chans: int, small_input: bool) -> NanoNet:
    """The involution twin: same widths and depth, only the spatial operator differs."""
    model_args: dict[str, Any] = dict(widths=(32, 64, 96), blocks=(2, 2, 2), kernel_size=3)
    return NanoNet(
        "involution",
        num_classes=num_classes,
        in_chans=in_chans,
        small_input=small_input,
        **model_args,
    )
