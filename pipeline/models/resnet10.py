"""ResNet-10 as a Table-3 student of the Co-advise study.

torchvision's ResNet with one BasicBlock per stage (about 4.9 M parameters), its ``fc`` replaced
by a :class:`.heads.MultiHead` on the pooled features, so it returns the student output dict.
``resnet10-nano`` narrows the four stages to 24/48/96/192 channels (about 0.69 M parameters, the
size of ``civt-nano``) for the CPU-scale Table 3.
The paper does not say how this student takes two teachers, so both options exist:
``token_mode="per-teacher"`` (default) gives one head per target, ``"cls"`` is the single-head
option (one output trained on the labels and on every teacher).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, ResNet

from .heads import HeadPlan, MultiHead, pooled_head_plan
from .registry import register_model
from .token_mode import TokenMode

RESNET_WIDTHS = (64, 128, 256, 512)
"""ResNet-18's stem and stage widths, which torchvision's ResNet builds."""


class ResNet10(nn.Module):
    """ResNet-10 returning ``{"cls": ..., <teacher>: ...}``.

    Args:
        num_classes: outputs of each head.
        in_chans: input channels.
        small_input: 3×3 stride-1 stem without max-pool (images of 64 px or less).
        plan: heads (see :class:`.heads.HeadPlan`).
        widths: channels of the stem and the four stages (ResNet's 64/128/256/512 by default).
    """

    inference_head = "cls"

    def __init__(
        self,
        *,
        num_classes: int,
        in_chans: int = 3,
        small_input: bool = False,
        plan: HeadPlan,
        widths: tuple[int, int, int, int] = RESNET_WIDTHS,
    ) -> None:
        super().__init__()
        self.backbone = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=1)
        if widths != RESNET_WIDTHS:
            # torchvision fixes the widths; its own _make_layer rebuilds narrower stages under
            # the same names (so checkpoints read the same), initialized as ResNet does.
            self.backbone.inplanes = widths[0]
            self.backbone.register_module("bn1", nn.BatchNorm2d(widths[0]))
            for i, width in enumerate(widths):
                stage = self.backbone._make_layer(BasicBlock, width, 1, stride=1 if i == 0 else 2)
                self.backbone.register_module(f"layer{i + 1}", stage)
            for m in self.backbone.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        kernel, stride = (3, 1) if small_input else (7, 2)
        self.backbone.conv1 = nn.Conv2d(
            in_chans, widths[0], kernel, stride, kernel // 2, bias=False
        )
        nn.init.kaiming_normal_(self.backbone.conv1.weight, mode="fan_out", nonlinearity="relu")
        # register_module swaps submodules without retyping ResNet's MaxPool2d / Linear slots.
        if small_input:
            self.backbone.register_module("maxpool", nn.Identity())
        self.backbone.register_module("fc", nn.Identity())
        self.heads = MultiHead(widths[-1], num_classes, plan)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.heads(self.backbone(x))


@register_model(
    "resnet10", kind="student", description="ResNet-10, one head per target or a single head"
)
def resnet10(
    *,
    num_classes: int,
    in_chans: int,
    small_input: bool,
    teacher_names: Sequence[str] = (),
    token_mode: TokenMode = "per-teacher",
) -> ResNet10:
    """ResNet-10 (Table 3's convolutional student)."""
    plan = pooled_head_plan("resnet10", teacher_names, token_mode)
    return ResNet10(num_classes=num_classes, in_chans=in_chans, small_input=small_input, plan=plan)


@register_model(
    "resnet10-nano",
    kind="student",
    description="ResNet-10 24/48/96/192 for CPUs (civt-nano's size), one head per target",
)
def resnet10_nano(
    *,
    num_classes: int,
    in_chans: int,
    small_input: bool,
    teacher_names: Sequence[str] = (),
    token_mode: TokenMode = "per-teacher",
) -> ResNet10:
    """ResNet-10 at civt-nano's scale (Table 3's convolutional student on a CPU)."""
    model_args: dict[str, Any] = dict(widths=(24, 48, 96, 192))
    plan = pooled_head_plan("resnet10-nano", teacher_names, token_mode)
    return ResNet10(
        num_classes=num_classes, in_chans=in_chans, small_input=small_input, plan=plan, **model_args
    )
