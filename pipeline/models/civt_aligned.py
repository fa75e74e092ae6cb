"""Aligned CivT: Co-advise's token inductive-bias alignment (Ren et al., CVPR 2022).

https://arxiv.org/abs/2106.12378 and the official code (OliverRensu/co-advise, ``models.py``).
There is no linear patch embedding: a convolution stem and an involution stem (:mod:`.stems`)
each turn the image into a grid of D-dim embeddings, and

    patch tokens        = conv grid + involution grid
    convolution token   = spatial mean of the conv grid        (computed, not learned)
    involution token    = spatial mean of the involution grid  (computed, not learned)
    sequence            = [cls, convolution token, involution token, patches] + position embedding

One linear head per token: the class head fits the labels, the convolution token's head the
convolution teacher, the involution token's head the involution teacher; the loss is unchanged.
Inference reports the mean of the three heads, as the official code does
(:attr:`AlignedCivT.inference_head`); every head is reported as well.

Patch rule: the patch size P must be even and at least 2, and the image side a multiple of P.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .heads import MEAN, HeadPlan
from .stems import ConvStem, InvolutionStem
from .token_mode import check_alignment
from .vit import VisionTransformer


class AlignedStems(nn.Module):
    """Both stems; ``forward`` returns their grids as token sequences ``[B, N, D]`` each.

    Args:
        image_size: square input side (unused: the grid follows the input; the signature is
            :data:`.vit.EmbedLayer`'s).
        patch_size: P, even and at least 2.
        in_chans: input channels.
        dim: token width D.
    """

    def __init__(self, image_size: int, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.conv = ConvStem(in_chans, dim, patch_size)
        self.inv = InvolutionStem(in_chans, dim, patch_size)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        conv = self.conv(x).flatten(2).transpose(1, 2)
        inv = self.inv(x).flatten(2).transpose(1, 2)
        return conv, inv


class AlignedCivT(VisionTransformer):
    """CivT with token inductive-bias alignment; ``forward`` returns ``{"cls", <conv>, <inv>}``.

    Args:
        teacher_names: the two teachers (output keys, in this order).
        align: every teacher's role, ``"conv"`` or ``"inv"`` (one of each; see
            :func:`.alignment.resolve_alignment`).
        **vit_args: :class:`VisionTransformer` arguments (image_size, patch_size, embed_dim...).
    """

    inference_head = MEAN
    """The official code reports the mean of the class, convolution and involution heads."""

    def __init__(
        self, *, teacher_names: Sequence[str], align: Mapping[str, str], **vit_args: Any
    ) -> None:
        conv_teacher, inv_teacher = check_alignment(teacher_names, align)
        plan = HeadPlan(tuple(teacher_names), "aligned")
        super().__init__(num_prefix_tokens=3, embed_layer=AlignedStems, **vit_args)
        self.plan = plan
        self.conv_teacher = conv_teacher
        self.inv_teacher = inv_teacher
        num_classes = self.head.out_features
        self.head_conv = nn.Linear(self.embed_dim, num_classes)
        self.head_inv = nn.Linear(self.embed_dim, num_classes)
        self.head_conv.apply(self._init_module)
        self.head_inv.apply(self._init_module)

    def stem_tokens(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The convolution and involution grids as token sequences, ``[B, N, D]`` each."""
        conv, inv = self.patch_embed(x)
        return conv, inv

    def tokens(self, x: Tensor) -> Tensor:
        """``[cls, conv mean, inv mean, conv + inv patches] + pos_embed``, ``[B, N + 3, D]``."""
        conv, inv = self.stem_tokens(x)
        prefix = [
            self.cls_token.expand(x.shape[0], -1, -1),
            conv.mean(dim=1, keepdim=True),
            inv.mean(dim=1, keepdim=True),
        ]
        return torch.cat([*prefix, conv + inv], dim=1) + self.pos_embed

    def forward_head(self, x: Tensor) -> dict[str, Tensor]:
        by_teacher = {
            self.conv_teacher: self.head_conv(x[:, 1]),
            self.inv_teacher: self.head_inv(x[:, 2]),
        }
        distill = [by_teacher[name] for name in self.plan.teacher_names]
        return self.plan.outputs(super().forward_head(x)["cls"], distill)
