"""CivT (Ren et al., CVPR 2022, "Co-advise: Cross Inductive Bias Distillation").

https://arxiv.org/abs/2106.12378. A ViT with the class token plus one distillation token per
teacher, each token read out by its own linear head; the student learns the labels on the class
token and teacher t's soft predictions on token t. It differs from :class:`VisionTransformer`
only in the tokens it prepends and the heads it reads (as timm's DeiT differs from its ViT).
The token mode (see :mod:`.heads`) gives the paper's ablations: a shared token (Table 6), DeiT
(one teacher), no distillation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .heads import HeadPlan
from .vit import VisionTransformer


class CivT(VisionTransformer):
    """ViT with one distillation token and head per teacher.

    ``forward`` returns ``{"cls": ..., <teacher>: ...}``, in training and evaluation alike.

    Args:
        teacher_names: output keys of the distillation heads, one per teacher.
        token_mode: ``"per-teacher"``, ``"shared"`` or ``"none"``.
        **vit_args: :class:`VisionTransformer` arguments (image_size, patch_size, embed_dim...).
    """

    def __init__(
        self,
        *,
        teacher_names: Sequence[str] = (),
        token_mode: str = "per-teacher",
        **vit_args: Any,
    ) -> None:
        plan = HeadPlan(tuple(teacher_names), token_mode)
        super().__init__(num_prefix_tokens=1 + plan.num_distill, **vit_args)
        self.plan = plan
        self.dist_tokens = nn.Parameter(torch.zeros(1, plan.num_distill, self.embed_dim))
        nn.init.trunc_normal_(self.dist_tokens, std=0.02)
        num_classes = self.head.out_features
        self.dist_heads = nn.ModuleList(
            nn.Linear(self.embed_dim, num_classes) for _ in range(plan.num_distill)
        )
        self.dist_heads.apply(self._init_module)

    def _pos_embed(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        prefix = [self.cls_token.expand(b, -1, -1), self.dist_tokens.expand(b, -1, -1)]
        return torch.cat([*prefix, x], dim=1) + self.pos_embed

    def forward_head(self, x: Tensor) -> dict[str, Tensor]:
        distill = [head(x[:, 1 + i]) for i, head in enumerate(self.dist_heads)]
        return self.plan.outputs(super().forward_head(x)["cls"], distill)
