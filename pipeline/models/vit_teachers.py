"""Vision-transformer *teachers*: ours (vit-nano, DeiT-Ti/S) and torchvision's ViT-B/16, ViT-L/16.

They exist for cross-architecture distillation (Liu et al., ACCV 2022, see docs/method.md): a
ViT teacher trained by ``train-teacher`` (or loaded from a local weight file) whose intermediate
features a CNN student learns from (``pipeline/cakd``). Like every teacher they return logits
``[B, C]``.

- ``vit-nano``, ``deit-ti``, ``deit-s`` are :class:`.vit.VisionTransformer` bodies (civt-nano,
  DeiT-Ti, DeiT-S without distillation tokens) read out by the class token, wrapped in
  :class:`ViTTeacher` so the forward returns the logits tensor a teacher returns.
- ``vit-b-16``, ``vit-l-16`` are torchvision's ``VisionTransformer`` (``weights=None``; a local
  torchvision ``.pth`` loads as bare weights through ``NAME=ARCH:CKPT``), built at any
  ``image_size`` that is a multiple of 16. ``in_chans`` != 3 replaces the patch projection.
"""

from __future__ import annotations

import math
from typing import Any

import torchvision.models as tvm
from torch import Tensor, nn

from ..runtime.errors import UserError
from .registry import register_model
from .vit import VisionTransformer


class ViTTeacher(nn.Module):
    """A :class:`.vit.VisionTransformer` whose forward returns its class-token logits ``[B, C]``.

    Args:
        **vit_args: :class:`.vit.VisionTransformer` arguments.
    """

    def __init__(self, **vit_args: Any) -> None:
        super().__init__()
        self.vit = VisionTransformer(**vit_args)

    def forward(self, x: Tensor) -> Tensor:
        return self.vit(x)["cls"]


class TorchvisionViT(tvm.VisionTransformer):
    """torchvision's ``VisionTransformer`` with the weight-decay hook every ViT here has."""

    def no_weight_decay(self) -> set[str]:
        """The class token and position embedding are learned inputs, not weights."""
        return {"class_token", "encoder.pos_embedding"}


TORCHVISION_VIT_ARGS: dict[str, tuple[int, int, int, int]] = {
    "vit-b-16": (12, 12, 768, 3072),
    "vit-l-16": (24, 16, 1024, 4096),
}
"""torchvision's ``vit_b_16`` / ``vit_l_16``: ``(layers, heads, hidden, MLP hidden)``, patch 16
(Dosovitskiy et al., 2021)."""

PATCH_SIZE = 16


def build_torchvision_vit(
    name: str, *, num_classes: int, in_chans: int, image_size: int
) -> TorchvisionViT:
    """torchvision ViT ``name`` (a key of :data:`TORCHVISION_VIT_ARGS`) with random weights.

    Args:
        name: ``"vit-b-16"`` or ``"vit-l-16"``.
        num_classes: classifier outputs.
        in_chans: input channels (other than 3: a fresh patch projection of the same shape
            otherwise, initialized as torchvision initializes its own).
        image_size: input side, a multiple of 16.
    """
    if image_size % PATCH_SIZE != 0:
        raise UserError(
            f"image size {image_size} is not a multiple of {name}'s patch size {PATCH_SIZE}"
        )
    layers, heads, hidden, mlp = TORCHVISION_VIT_ARGS[name]
    model = TorchvisionViT(
        image_size=image_size,
        patch_size=PATCH_SIZE,
        num_layers=layers,
        num_heads=heads,
        hidden_dim=hidden,
        mlp_dim=mlp,
        num_classes=num_classes,
    )
    if in_chans != 3:
        # A fresh patch projection, initialized as torchvision initializes its own.
        proj = nn.Conv2d(in_chans, hidden, PATCH_SIZE, PATCH_SIZE)
        nn.init.trunc_normal_(proj.weight, std=math.sqrt(1 / (in_chans * PATCH_SIZE**2)))
        assert proj.bias is not None
        nn.init.zeros_(proj.bias)
        model.conv_proj = proj
    return model


@register_model(
    "vit-nano", kind="teacher", description="ViT teacher for CPUs: civt-nano's body, 96×6, 3 heads"
)
def vit_nano(
    *,
    num_classes: int,
    in_chans: int,
    image_size: int,
    patch_size: int = 4,
    drop_path_rate: float = 0.0,
) -> ViTTeacher:
    """civt-nano without distillation tokens, as a teacher (16 px images, patch 4: 4×4 grid)."""
    model_args: dict[str, Any] = dict(embed_dim=96, depth=6, num_heads=3)
    return ViTTeacher(
        num_classes=num_classes,
        in_chans=in_chans,
        image_size=image_size,
        patch_size=patch_size,
        drop_path_rate=drop_path_rate,
        **model_args,
    )


@register_model(
    "deit-ti",
    kind="teacher",
    description="DeiT-Ti teacher: ViT 192×12, 3 heads",
    published_params=5_717_416,  # timm deit_tiny_patch16_224
)
def deit_ti(
    *,
    num_classes: int,
    in_chans: int,
    image_size: int,
    patch_size: int = 16,
    drop_path_rate: float = 0.1,
) -> ViTTeacher:
    """DeiT-Ti (Touvron et al., 2021) as a teacher."""
    model_args: dict[str, Any] = dict(embed_dim=192, depth=12, num_heads=3)
    return ViTTeacher(
        num_classes=num_classes,
        in_chans=in_chans,
        image_size=image_size,
        patch_size=patch_size,
        drop_path_rate=drop_path_rate,
        **model_args,
    )


@register_model(
    "deit-s",
    kind="teacher",
    description="DeiT-S teacher: ViT 384×12, 6 heads",
    published_params=22_050_664,  # timm deit_small_patch16_224
)
def deit_s(
    *,
    num_classes: int,
    in_chans: int,
    image_size: int,
    patch_size: int = 16,
    drop_path_rate: float = 0.1,
) -> ViTTeacher:
    """DeiT-S (Touvron et al., 2021) as a teacher."""
    model_args: dict[str, Any] = dict(embed_dim=384, depth=12, num_heads=6)
    return ViTTeacher(
        num_classes=num_classes,
        in_chans=in_chans,
        image_size=image_size,
        patch_size=patch_size,
        drop_path_rate=drop_path_rate,
        **model_args,
    )


@register_model(
    "vit-b-16",
    kind="teacher",
    description="torchvision vit_b_16 (ViT-B/16: 768×12, 12 heads)",
    published_params=86_567_656,
)
def vit_b_16(*, num_classes: int, in_chans: int, image_size: int) -> TorchvisionViT:
    """torchvision's ViT-B/16 (the paper's ImageNet teacher)."""
    return build_torchvision_vit(
        "vit-b-16", num_classes=num_classes, in_chans=in_chans, image_size=image_size
    )


@register_model(
    "vit-l-16",
    kind="teacher",
    description="torchvision vit_l_16 (ViT-L/16: 1024×24, 16 heads)",
    published_params=304_326_632,
)
def vit_l_16(*, num_classes: int, in_chans: int, image_size: int) -> TorchvisionViT:
    """torchvision's ViT-L/16."""
    return build_torchvision_vit(
        "vit-l-16", num_classes=num_classes, in_chans=in_chans, image_size=image_size
    )
