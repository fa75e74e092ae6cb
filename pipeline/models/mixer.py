"""MLP-Mixer (Tolstikhin et al., NeurIPS 2021) as a Table-3 student of the Co-advise study.

https://arxiv.org/abs/2105.01601. Mixer-Ti: 12 layers, 192 hidden, token-MLP 96, channel-MLP
768 (the Ti/16 scaling of Mixer-S/16's 512/256/2048). There is no class token, so the heads
read the globally pooled features: with ``token_mode="per-teacher"`` (default) every target
(class labels and each teacher) gets its own linear head; ``"cls"`` is the single-head option
(one output trained on the labels and on every teacher). The paper does not say which it used.
``mixer-nano`` scales Mixer-Ti as civt-nano scales civt-ti: 96 hidden × 6 layers, token-MLP 48,
channel-MLP 384, patch 4 (16 patches of a 16 px image).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from .heads import HeadPlan, MultiHead, pooled_head_plan
from .registry import register_model
from .token_mode import TokenMode
from .vit import Mlp, PatchEmbed


class MixerBlock(nn.Module):
    """Token mixing across patches, then channel mixing, each pre-norm and residual."""

    def __init__(self, num_patches: int, dim: int, token_hidden: int, channel_hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.token_mlp = Mlp(num_patches, token_hidden)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.channel_mlp = Mlp(dim, channel_hidden)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.norm2(x))


class MlpMixer(nn.Module):
    """MLP-Mixer returning ``{"cls": ..., <teacher>: ...}`` (one head per target).

    Args:
        image_size: square input side (a multiple of ``patch_size``).
        patch_size: patch side.
        in_chans: input channels.
        num_classes: outputs of each head.
        dim: hidden width.
        depth: mixer blocks.
        token_hidden: token-MLP width.
        channel_hidden: channel-MLP width.
        plan: heads (see :class:`.heads.HeadPlan`).
    """

    inference_head = "cls"

    def __init__(
        self,
        *,
        image_size: int,
        patch_size: int,
        in_chans: int,
        num_classes: int,
        dim: int = 192,
        depth: int = 12,
        token_hidden: int = 96,
        channel_hidden: int = 768,
        plan: HeadPlan,
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(image_size, patch_size, in_chans, dim)
        n = self.patch_embed.num_patches
        self.blocks = nn.Sequential(
            *(MixerBlock(n, dim, token_hidden, channel_hidden) for _ in range(depth))
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.heads = MultiHead(dim, num_classes, plan)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        tokens = self.norm(self.blocks(self.patch_embed(x)))
        return self.heads(tokens.mean(dim=1))


@register_model(
    "mixer-ti",
    kind="student",
    description="MLP-Mixer-Ti 192×12, one head per target or a single head",
)
def mixer_ti(
    *,
    num_classes: int,
    in_chans: int,
    image_size: int,
    teacher_names: Sequence[str] = (),
    token_mode: TokenMode = "per-teacher",
    patch_size: int = 16,
) -> MlpMixer:
    """Mixer-Ti/16 (Table 3's MLP student)."""
    model_args: dict[str, Any] = dict(dim=192, depth=12, token_hidden=96, channel_hidden=768)
    return MlpMixer(
        image_size=image_size,
        patch_size=patch_size,
        in_chans=in_chans,
        num_classes=num_classes,
        plan=pooled_head_plan("mixer-ti", teacher_names, token_mode),
        **model_args,
    )


@register_model(
    "mixer-nano",
    kind="student",
    description="MLP-Mixer 96×6 for CPUs (civt-nano's scale), one head per target",
)
def mixer_nano(
    *,
    num_classes: int,
    in_chans: int,
    image_size: int,
    teacher_names: Sequence[str] = (),
    token_mode: TokenMode = "per-teacher",
    patch_size: int = 4,
) -> MlpMixer:
    """Mixer at civt-nano's scale (Table 3's MLP student on a CPU, 16 px images)."""
    model_args: dict[str, Any] = dict(dim=96, depth=6, token_hidden=48, channel_hidden=384)
    return MlpMixer(
        image_size=image_size,
        patch_size=patch_size,
        in_chans=in_chans,
        num_classes=num_classes,
        plan=pooled_head_plan("mixer-nano", teacher_names, token_mode),
        **model_args,
    )
