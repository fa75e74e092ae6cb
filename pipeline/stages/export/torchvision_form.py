"""A torchvision teacher under torchvision's own names (the ``--format timm`` of a teacher).

Our teachers are ``NormalizedModel(normalize, body)`` with ``body`` a torchvision ``ResNet`` or
``RegNet``, so the state dict is torchvision's with a ``body.`` prefix, plus the normalization
buffers. The form drops both: the normalization is *not* folded into the first convolution
(with zero padding that would not be exact at the borders); its mean and std are written in the
manifest's ``pretrained_cfg`` instead, as timm does, and the inputs must be normalized with them.
A stem adapted to small images or other channel counts (see ``torchvision_teachers``) is
described in the manifest too: the model to build is torchvision's with that stem.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torchvision.models as tvm
from torch import Tensor, nn

from ...models.normalize import NormalizedModel
from ...models.torchvision_teachers import REGNET_Y_PARAMS, TORCHVISION_BUILDERS, regnet_stages
from ...runtime.errors import UserError


@dataclass(frozen=True, slots=True)
class TorchvisionForm:
    """A teacher as torchvision builds it."""

    builder: str
    """What builds the model: ``torchvision.models.resnet18`` or ``torchvision.models.RegNet``."""
    builder_args: dict[str, Any]
    """Its keyword arguments (``num_classes``; for ``RegNet`` the ``BlockParams`` fields)."""
    stem: dict[str, Any] | None
    """How the stem differs from the builder's (None: it does not)."""
    state_dict: dict[str, Tensor]
    """The weights under torchvision's names."""


def torchvision_form(model: NormalizedModel) -> TorchvisionForm:
    """The torchvision form of a torchvision teacher; other teachers are a :class:`UserError`."""
    if model.arch not in TORCHVISION_BUILDERS:
        raise UserError(
            f"{model.arch} is not a torchvision model and has no timm or torchvision form; "
            "export it with --format safetensors or --format torchscript"
        )
    args = model.model_args
    num_classes = int(args["num_classes"])
    state = {
        key.removeprefix("body."): value.detach().clone()
        for key, value in model.state_dict().items()
        if key.startswith("body.")
    }
    builder_args: dict[str, Any] = {"num_classes": num_classes}
    if model.arch in REGNET_Y_PARAMS:
        p = REGNET_Y_PARAMS[model.arch]
        depths, widths, groups = regnet_stages(
            int(p["depth"]), p["w_0"], p["w_a"], p["w_m"], int(p["group_width"])
        )
        n = len(depths)
        builder = "torchvision.models.RegNet"
        builder_args["block_params"] = dict(
            depths=depths,
            widths=widths,
            group_widths=groups,
            bottleneck_multipliers=[1.0] * n,
            strides=[2] * n,
            se_ratio=0.25,
        )
    else:
        builder = f"torchvision.models.{model.arch}"
    return TorchvisionForm(
        builder=builder, builder_args=builder_args, stem=_stem(model), state_dict=state
    )


def _stem(model: NormalizedModel) -> dict[str, Any] | None:
    """The stem adaptation ``build_torchvision`` made, or None for torchvision's own stem."""
    body = model.body
    if isinstance(body, tvm.ResNet):
        conv, name = body.conv1, "conv1"
    else:
        assert isinstance(body, tvm.RegNet) and isinstance(body.stem, nn.Sequential)
        conv, name = body.stem[0], "stem.0"
    assert isinstance(conv, nn.Conv2d)
    # torchvision's own first convolutions: RGB, 7×7 stride 2 (ResNet), 3×3 stride 2 (RegNet).
    own = (3, (7, 7), (2, 2)) if isinstance(body, tvm.ResNet) else (3, (3, 3), (2, 2))
    same_conv = (conv.in_channels, conv.kernel_size, conv.stride) == own
    no_maxpool = isinstance(body, tvm.ResNet) and isinstance(body.maxpool, nn.Identity)
    if same_conv and not no_maxpool:
        return None
    stem: dict[str, Any] = {
        name: dict(
            in_channels=conv.in_channels,
            out_channels=conv.out_channels,
            kernel_size=conv.kernel_size[0],
            stride=conv.stride[0],
            padding=conv.padding[0] if isinstance(conv.padding, tuple) else conv.padding,
            bias=conv.bias is not None,
        )
    }
    if no_maxpool:
        stem["maxpool"] = "torch.nn.Identity"
    return stem
