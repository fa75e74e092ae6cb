"""RedNet: ResNet with involution in place of the 3×3 convolutions (Li et al., CVPR 2021).

https://arxiv.org/abs/2103.06255. The structure follows the authors' classification backbone:
bottleneck blocks whose middle 3×3 convolution becomes a 7×7 involution (reduction 4, 16
channels per group), and a stem of 3×3 conv (stride 2) → 3×3 involution → 3×3 conv, then max-pool.
Stage depths: RedNet-26 (1, 2, 4, 1), -38 (2, 3, 5, 2), -50 (3, 4, 6, 3), -101 (3, 4, 23, 3),
-152 (3, 8, 36, 3).

For images of 64 px or less (``small_input``) the stem keeps stride 1 and the max-pool is dropped,
as is usual for CIFAR-sized ResNets, so the last stage still sees a few pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .involution import Involution
from .registry import register_model
from .stems import involution_stem_layers


class InvolutionBottleneck(nn.Module):
    """1×1 conv → K×K involution (carries the stride) → 1×1 conv, with a residual connection."""

    expansion = 4

    def __init__(self, cin: int, mid: int, stride: int = 1, kernel_size: int = 7) -> None:
        super().__init__()
        cout = mid * self.expansion
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.inv = Involution(mid, kernel_size, stride)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.inv(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.downsample(x))


class RedNet(nn.Module):
    """RedNet classifier returning logits ``[B, num_classes]``.

    Args:
        depths: bottleneck blocks per stage.
        num_classes: classifier outputs.
        in_chans: input channels.
        small_input: 3×3 stride-1 stem without max-pool (for images of 64 px or less).
        stem_channels: stem output channels.
        base_channels: bottleneck width of the first stage (doubled each stage).
        kernel_size: involution kernel in the blocks.
    """

    def __init__(
        self,
        depths: Sequence[int],
        *,
        num_classes: int,
        in_chans: int = 3,
        small_input: bool = False,
        stem_channels: int = 64,
        base_channels: int = 64,
        kernel_size: int = 7,
    ) -> None:
        super().__init__()
        stem = involution_stem_layers(in_chans, stem_channels, 1 if small_input else 2)
        if not small_input:
            stem.append(nn.MaxPool2d(3, 2, 1))
        self.stem = nn.Sequential(*stem)

        stages: list[nn.Module] = []
        cin = stem_channels
        for i, depth in enumerate(depths):
            mid = base_channels * 2**i
            blocks: list[nn.Module] = []
            for j in range(depth):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(InvolutionBottleneck(cin, mid, stride, kernel_size))
                cin = mid * InvolutionBottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Zero-init the last BN of each residual branch: every block starts as the identity,
        # which makes deep RedNets train stably from scratch (as in the reference recipe).
        for m in self.modules():
            if isinstance(m, InvolutionBottleneck):
                nn.init.zeros_(m.bn3.weight)

    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled features ``[B, D]``."""
        return self.pool(self.stages(self.stem(x))).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x))


@register_model(
    "rednet26",
    kind="teacher",
    bias="inv",
    description="RedNet-26 (involution)",
    published_params=9_200_000,
)
def rednet26(*, num_classes: int, in_chans: int, small_input: bool) -> RedNet:
    """RedNet-26."""
    return RedNet((1, 2, 4, 1), num_classes=num_classes, in_chans=in_chans, small_input=small_input)


@register_model(
    "rednet38",
    kind="teacher",
    bias="inv",
    description="RedNet-38 (involution)",
    published_params=12_400_000,
)
def rednet38(*, num_classes: int, in_chans: int, small_input: bool) -> RedNet:
    """RedNet-38."""
    return RedNet((2, 3, 5, 2), num_classes=num_classes, in_chans=in_chans, small_input=small_input)


@register_model(
    "rednet50",
    kind="teacher",
    bias="inv",
    description="RedNet-50 (involution)",
    published_params=15_500_000,
)
def rednet50(*, num_classes: int, in_chans: int, small_input: bool) -> RedNet:
    """RedNet-50."""
    return RedNet((3, 4, 6, 3), num_classes=num_classes, in_chans=in_chans, small_input=small_input)


@register_model(
    "rednet101",
    kind="teacher",
    bias="inv",
    description="RedNet-101 (involution)",
    published_params=25_600_000,
)
def rednet101(*, num_classes: int, in_chans: int, small_input: bool) -> RedNet:
    """RedNet-101."""
    return RedNet(
        (3, 4, 23, 3), num_classes=num_classes, in_chans=in_chans, small_input=small_input
    )


@register_model(
    "rednet152",
    kind="teacher",
    bias="inv",
    description="RedNet-152 (involution)",
    published_params=34_000_000,
)
def rednet152(*, num_classes: int, in_chans: int, small_input: bool) -> RedNet:
    """RedNet-152."""
    return RedNet(
        (3, 8, 36, 3), num_classes=num_classes, in_chans=in_chans, small_input=small_input
    )
