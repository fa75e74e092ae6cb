"""ResNet-10 as a Table-3 student of the Co-advise study: one head per target.

torchvision's ResNet with one BasicBlock per stage (about 4.9 M parameters), its ``fc`` replaced
by a :class:`.heads.MultiHead` on the pooled features, so it returns the student output dict.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, ResNet

from .heads import HeadPlan, MultiHead


class ResNet10(nn.Module):
    """ResNet-10 returning ``{"cls": ..., <teacher>: ...}``.

    Args:
        num_classes: outputs of each head.
        in_chans: input channels.
        small_input: 3×3 stride-1 stem without max-pool (images of 64 px or less).
        plan: heads (see :class:`.heads.HeadPlan`).
    """

    def __init__(
        self, *, num_classes: int, in_chans: int = 3, small_input: bool = False, plan: HeadPlan
    ) -> None:
        super().__init__()
        self.backbone = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=1)
        kernel, stride = (3, 1) if small_input else (7, 2)
        self.backbone.conv1 = nn.Conv2d(in_chans, 64, kernel, stride, kernel // 2, bias=False)
        nn.init.kaiming_normal_(self.backbone.conv1.weight, mode="fan_out", nonlinearity="relu")
        if small_input:
            self.backbone.maxpool = nn.Identity()
        self.backbone.fc = nn.Identity()  # type: ignore[assignment]
        self.heads = MultiHead(512, num_classes, plan)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.heads(self.backbone(x))
