"""torchvision CNN teachers (ResNet, RegNetY), always built with ``weights=None``.

Weights come from ``train-teacher`` or a local file (see ``checkpoint.py``); nothing is
downloaded. Two adaptations are made in place:

- ``in_chans`` != 3 replaces the first convolution (same shape otherwise);
- ``small_input`` (images of 64 px or less) makes the stem a 3×3 stride-1 convolution and drops
  ResNet's max-pool, the usual CIFAR-style stem, so a 32 px image is not reduced to 1 px.

The presets at the foot record the parameter counts torchvision lists for its ImageNet weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torchvision.models as tvm
from torch import nn

from .registry import register_model

TORCHVISION_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": tvm.resnet18,
    "resnet34": tvm.resnet34,
    "resnet50": tvm.resnet50,
    "regnet_y_400mf": tvm.regnet_y_400mf,
    "regnet_y_800mf": tvm.regnet_y_800mf,
}


def _replace_conv(old: nn.Conv2d, *, in_chans: int, kernel: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(
        in_chans, old.out_channels, kernel, stride, kernel // 2, bias=old.bias is not None
    )


def build_torchvision(
    name: str, *, num_classes: int, in_chans: int = 3, small_input: bool = False
) -> nn.Module:
    """A torchvision classifier ``name`` with random weights, adapted to the input.

    Args:
        name: one of :data:`TORCHVISION_BUILDERS`.
        num_classes: classifier outputs.
        in_chans: input channels.
        small_input: CIFAR-style stem (3×3, stride 1, no max-pool).
    """
    model = TORCHVISION_BUILDERS[name](weights=None, num_classes=num_classes)
    if isinstance(model, tvm.ResNet):
        if in_chans != 3 or small_input:
            kernel, stride = (3, 1) if small_input else (7, 2)
            model.conv1 = _replace_conv(
                model.conv1, in_chans=in_chans, kernel=kernel, stride=stride
            )
            nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        if small_input:
            # register_module replaces the submodule without retyping ResNet's MaxPool2d slot.
            model.register_module("maxpool", nn.Identity())
    elif isinstance(model, tvm.RegNet):
        stem = model.stem
        assert isinstance(stem, nn.Sequential)
        conv = stem[0]
        assert isinstance(conv, nn.Conv2d)
        if in_chans != 3 or small_input:
            new = _replace_conv(conv, in_chans=in_chans, kernel=3, stride=1 if small_input else 2)
            nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
            stem[0] = new
    return model


@register_model(
    "resnet18",
    kind="teacher",
    description="torchvision resnet18 (convolution)",
    published_params=11_689_512,
)
def resnet18(*, num_classes: int, in_chans: int, small_input: bool) -> nn.Module:
    """torchvision's ResNet-18."""
    return build_torchvision(
        "resnet18", num_classes=num_classes, in_chans=in_chans, small_input=small_input
    )


@register_model(
    "resnet34",
    kind="teacher",
    description="torchvision resnet34 (convolution)",
    published_params=21_797_672,
)
def resnet34(*, num_classes: int, in_chans: int, small_input: bool) -> nn.Module:
    """torchvision's ResNet-34."""
    return build_torchvision(
        "resnet34", num_classes=num_classes, in_chans=in_chans, small_input=small_input
    )


@register_model(
    "resnet50",
    kind="teacher",
    description="torchvision resnet50 (convolution)",
    published_params=25_557_032,
)
def resnet50(*, num_classes: int, in_chans: int, small_input: bool) -> nn.Module:
    """torchvision's ResNet-50."""
    return build_torchvision(
        "resnet50", num_classes=num_classes, in_chans=in_chans, small_input=small_input
    )


@register_model(
    "regnet_y_400mf",
    kind="teacher",
    description="torchvision regnet_y_400mf (convolution)",
    published_params=4_344_144,
)
def regnet_y_400mf(*, num_classes: int, in_chans: int, small_input: bool) -> nn.Module:
    """torchvision's RegNetY-400MF."""
    return build_torchvision(
        "regnet_y_400mf", num_classes=num_classes, in_chans=in_chans, small_input=small_input
    )


@register_model(
    "regnet_y_800mf",
    kind="teacher",
    description="torchvision regnet_y_800mf (convolution)",
    published_params=6_432_512,
)
def regnet_y_800mf(*, num_classes: int, in_chans: int, small_input: bool) -> nn.Module:
    """torchvision's RegNetY-800MF."""
    return build_torchvision(
        "regnet_y_800mf", num_classes=num_classes, in_chans=in_chans, small_input=small_input
    )
