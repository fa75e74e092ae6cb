"""torchvision CNNs (ResNet, RegNetY, MobileNetV2, EfficientNet-B0), built with ``weights=None``.

Co-advise's CNN teachers, RegNetY-600MF and RegNetY-4GF, and DeiT's, RegNetY-16GF, are not
shipped by torchvision under a name; they are built from its ``RegNet`` with the published block
parameters (Radosavovic et al., 2020, as in pycls/timm), see :data:`REGNET_Y_PARAMS`.

Weights come from ``train-teacher`` or a local file (see ``checkpoint.py``; timm's RegNetY files
load by the key map in ``zoo_pycls.py``); nothing is downloaded. Two adaptations are made in place:

- ``in_chans`` != 3 replaces the first convolution (same shape otherwise);
- ``small_input`` (images of 64 px or less) makes the stem a 3×3 stride-1 convolution and drops
  ResNet's max-pool, the usual CIFAR-style stem, so a 32 px image is not reduced to 1 px
  (MobileNetV2 / EfficientNet-B0: also their first stride-2 stage, see
  :func:`_adapt_inverted_residual_net`).

MobileNetV2 and EfficientNet-B0 are there as CNN students of cross-architecture distillation
(``train-cakd``); any CNN preset serves as one, so they are registered as teachers (logits out).

The presets at the foot record the parameter counts torchvision lists for its ImageNet weights.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torchvision.models as tvm
from torch import nn
from torchvision.models.regnet import BlockParams

from .registry import register_model

REGNET_Y_PARAMS: dict[str, dict[str, float]] = {
    "regnety-600mf": dict(depth=15, w_0=48, w_a=32.54, w_m=2.32, group_width=16),
    "regnety-4gf": dict(depth=22, w_0=96, w_a=31.41, w_m=2.24, group_width=64),
    "regnety-16gf": dict(depth=18, w_0=200, w_a=106.23, w_m=2.48, group_width=112),
}
"""RegNetY design parameters the torchvision builders lack (all with squeeze-excitation 0.25)."""


def regnet_stages(
    depth: int, w_0: float, w_a: float, w_m: float, group_width: int
) -> tuple[list[int], list[int], list[int]]:
    """Per-stage ``(depths, widths, group widths)`` of a RegNet, as pycls (the RegNet authors'
    code, whose models the papers report) generates them.

    Block widths follow ``w_0 · w_m^round(log((i·w_a + w_0) / w_0) / log w_m)``, quantized to
    multiples of 8; equal consecutive widths form a stage, whose width is then rounded to a
    multiple of its group width. torchvision's ``BlockParams.from_init_params`` rounds that last
    step differently (RegNetY-4GF's second stage: 256 instead of 192, 21.4 M parameters instead
    of the published 20.6 M), so only its ``RegNet`` is used, not its width rule.
    """
    block_widths = []
    for i in range(depth):
        k = round(math.log((i * w_a + w_0) / w_0) / math.log(w_m))
        block_widths.append(int(round(w_0 * w_m**k / 8) * 8))
    widths: list[int] = []
    depths: list[int] = []
    for width in block_widths:  # non-decreasing, so stages are runs of equal widths
        if widths and widths[-1] == width:
            depths[-1] += 1
        else:
            widths.append(width)
            depths.append(1)
    groups = [min(group_width, w) for w in widths]
    widths = [max(g, round(w / g) * g) for w, g in zip(widths, groups, strict=True)]
    return depths, widths, groups


def _regnet_y(name: str, *, weights: None, num_classes: int) -> tvm.RegNet:
    """torchvision's ``RegNet`` with :data:`REGNET_Y_PARAMS` ``[name]`` (``weights`` is always
    None, taken for the signature of torchvision's builders: nothing is downloaded)."""
    p = REGNET_Y_PARAMS[name]
    depths, widths, groups = regnet_stages(
        int(p["depth"]), p["w_0"], p["w_a"], p["w_m"], int(p["group_width"])
    )
    n = len(depths)
    params = BlockParams(depths, widths, groups, [1.0] * n, [2] * n, se_ratio=0.25)
    return tvm.RegNet(params, num_classes=num_classes)


TORCHVISION_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": tvm.resnet18,
    "resnet34": tvm.resnet34,
    "resnet50": tvm.resnet50,
    "regnet_y_400mf": tvm.regnet_y_400mf,
    "regnet_y_800mf": tvm.regnet_y_800mf,
    "mobilenet-v2": tvm.mobilenet_v2,
    "efficientnet-b0": tvm.efficientnet_b0,
    **{name: functools.partial(_regnet_y, name) for name in REGNET_Y_PARAMS},
}


def _replace_conv(old: nn.Conv2d, *, in_chans: int, kernel: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(
        in_chans, old.out_channels, kernel, stride, kernel // 2, bias=old.bias is not None
    )


def _adapt_inverted_residual_net(
    features: nn.Sequential, *, in_chans: int, small_input: bool
) -> None:
    """MobileNetV2 / EfficientNet: ``features[0][0]`` is the stem convolution.

    ``small_input`` makes it stride 1 and also the first stride-2 stage (``features[2]``), as
    CIFAR ports of MobileNetV2 do: total stride 8 like ResNet's small stem, so a 32 px image
    leaves a 4×4 map (stride 32 would leave 1×1).
    """
    stem = features[0]
    assert isinstance(stem, nn.Sequential)
    conv = stem[0]
    assert isinstance(conv, nn.Conv2d)
    if in_chans != 3 or small_input:
        new = _replace_conv(conv, in_chans=in_chans, kernel=3, stride=1 if small_input else 2)
        nn.init.kaiming_normal_(new.weight, mode="fan_out")
        stem[0] = new
    if small_input:
        for module in features[2].modules():
            if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
                module.stride = (1, 1)


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
    elif isinstance(model, tvm.MobileNetV2 | tvm.EfficientNet):
        _adapt_inverted_residual_net(model.features, in_chans=in_chans, small_input=small_input)
    return model


@register_model(
    "resnet18",
    kind="teacher",
    bias="conv",
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
    bias="conv",
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
    bias="conv",
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
    bias="conv",
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
    bias="conv",
    description="torchvision regnet_y_800mf (convolution)",
    published_params=6_432_512,
)
def regnet_y_800mf(*, num_classes: int, in_chans: int, small_input: bool) -> nn.Module:
    """torchvision's RegNetY-800MF."""
    return build_torchvision(
        "regnet_y_800mf", num_classes=num_classes, in_chans=in_chans, small_input=small_input
    )


@register_model(
    "regnety-600mf",
    kind="teacher",
    bias="conv",
    description="RegNetY-600MF (convolution; Co-advise's light CNN teacher)",
    published_params=6_055_160,  # timm regnety_006 / pycls RegNetY-600MF
)
def regnety_600mf(*, num_classes: int, in_chans: int, small_input: bool) -> nn.Module:
    """RegNetY-600MF from torchvision's ``RegNet`` (depth 15, w0 48, wa 32.54, wm 2.32, g 16)."""
    return build_torchvision(
        "regnety-600mf", num_classes=num_classes, in_chans=in_chans, small_input=small_input
    )


@register_model(
    "regnety-4gf",
    kind="teacher",
    bias="conv",
    description="RegNetY-4GF (convolution; Co-advise's heavier CNN teacher)",
    published_params=20_646_656,  # timm regnety_040 / pycls RegNetY-4.0GF
)
def regnety_4gf(*, num_classes: int, in_chans: int, small_input: bool) -> nn.Module:
    """RegNetY-4GF from torchvision's ``RegNet`` (depth 22, w0 96, wa 31.41, wm 2.24, g 64)."""
    return build_torchvision(
        "regnety-4gf", num_classes=num_classes, in_chans=in_chans, small_input=small_input
    )


@register_model(
    "regnety-16gf",
    kind="teacher",
    bias="conv",
    description="RegNetY-16GF (convolution; DeiT's teacher)",
    published_params=83_590_140,  # timm regnety_160 / pycls RegNetY-16GF ("83.6 M" in DeiT)
)
def regnety_16gf(*, num_classes: int, in_chans: int, small_input: bool) -> nn.Module:
    """RegNetY-16GF from torchvision's ``RegNet`` (depth 18, w0 200, wa 106.23, wm 2.48, g 112)."""
    return build_torchvision(
        "regnety-16gf", num_classes=num_classes, in_chans=in_chans, small_input=small_input
    )


@register_model(
    "mobilenet-v2",
    kind="teacher",
    bias="conv",
    description="torchvision mobilenet_v2 (convolution; a CAKD student)",
    published_params=3_504_872,
)
def mobilenet_v2(*, num_classes: int, in_chans: int, small_input: bool) -> nn.Module:
    """torchvision's MobileNetV2."""
    return build_torchvision(
        "mobilenet-v2", num_classes=num_classes, in_chans=in_chans, small_input=small_input
    )


@register_model(
    "efficientnet-b0",
    kind="teacher",
    bias="conv",
    description="torchvision efficientnet_b0 (convolution; a CAKD student)",
    published_params=5_288_548,
)
def efficientnet_b0(*, num_classes: int, in_chans: int, small_input: bool) -> nn.Module:
    """torchvision's EfficientNet-B0."""
    return build_torchvision(
        "efficientnet-b0", num_classes=num_classes, in_chans=in_chans, small_input=small_input
    )
