"""CivT (Ren et al., CVPR 2022, "Co-advise: Cross Inductive Bias Distillation").

https://arxiv.org/abs/2106.12378. A ViT with the class token plus one distillation token per
teacher, each token read out by its own linear head; the student learns the labels on the class
token and teacher t's soft predictions on token t. It differs from :class:`VisionTransformer`
only in the tokens it prepends and the heads it reads (as timm's DeiT differs from its ViT).
The token mode (see :mod:`.token_mode`) gives the paper's variants and ablations: token
inductive-bias alignment (``"aligned"``, built as :class:`.civt_aligned.AlignedCivT`), the class
token fitting labels and every teacher (``"cls"``, Table 6's "1 token"), one shared distillation
token (``"shared"``, the average-teacher target), DeiT (one teacher), no distillation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..runtime.errors import UserError
from .civt_aligned import AlignedCivT
from .heads import HeadPlan
from .registry import register_model
from .token_mode import TokenMode
from .vit import VisionTransformer


class CivT(VisionTransformer):
    """ViT with one distillation token and head per teacher.

    ``forward`` returns ``{"cls": ..., <teacher>: ...}``, in training and evaluation alike.

    Args:
        teacher_names: output keys of the distillation heads, one per teacher.
        token_mode: ``"per-teacher"``, ``"shared"``, ``"cls"`` or ``"none"`` (``"aligned"`` is
            :class:`.civt_aligned.AlignedCivT`).
        **vit_args: :class:`VisionTransformer` arguments (image_size, patch_size, embed_dim...).
    """

    def __init__(
        self,
        *,
        teacher_names: Sequence[str] = (),
        token_mode: TokenMode = "per-teacher",
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

    def no_weight_decay(self) -> set[str]:
        """The ViT's undecayed parameters plus the distillation tokens."""
        return super().no_weight_decay() | {"dist_tokens"}

    def _pos_embed(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        prefix = [self.cls_token.expand(b, -1, -1), self.dist_tokens.expand(b, -1, -1)]
        return torch.cat([*prefix, x], dim=1) + self.pos_embed

    def forward_head(self, x: Tensor) -> dict[str, Tensor]:
        distill = [head(x[:, 1 + i]) for i, head in enumerate(self.dist_heads)]
        return self.plan.outputs(super().forward_head(x)["cls"], distill)


def build_civt(
    *,
    teacher_names: Sequence[str],
    token_mode: TokenMode,
    align: Mapping[str, str] | None,
    **vit_args: Any,
) -> VisionTransformer:
    """A :class:`CivT`, or an :class:`.civt_aligned.AlignedCivT` for ``token_mode="aligned"``.

    Args:
        teacher_names: one output key per teacher.
        token_mode: one of :data:`.token_mode.TOKEN_MODES`.
        align: every teacher's role (``"conv"``/``"inv"``); required by, and only for, aligned.
        **vit_args: :class:`VisionTransformer` arguments.
    """
    if token_mode == "aligned":
        return AlignedCivT(teacher_names=teacher_names, align=align or {}, **vit_args)
    if align:
        raise UserError(f"align is for token mode 'aligned' only, not {token_mode!r}")
    return CivT(teacher_names=teacher_names, token_mode=token_mode, **vit_args)


@register_model(
    "civt-ti",
    kind="student",
    description="CivT-Ti: ViT 192×12, 3 heads",
    published_params=5_700_000,  # DeiT-Ti (timm deit_tiny_patch16_224), no distillation token
)
def civt_ti(
    *,
    num_classes: int,
    in_chans: int,
    image_size: int,
    teacher_names: Sequence[str] = (),
    token_mode: TokenMode = "per-teacher",
    align: Mapping[str, str] | None = None,
    patch_size: int = 16,
    drop_path_rate: float = 0.1,
) -> VisionTransformer:
    """CivT-Ti, the paper's main student (DeiT-Ti with one token per teacher)."""
    model_args: dict[str, Any] = dict(embed_dim=192, depth=12, num_heads=3)
    return build_civt(
        num_classes=num_classes,
        in_chans=in_chans,
        image_size=image_size,
        teacher_names=teacher_names,
        token_mode=token_mode,
        align=align,
        patch_size=patch_size,
        drop_path_rate=drop_path_rate,
        **model_args,
    )


@register_model(
    "civt-s",
    kind="student",
    description="CivT-S: ViT 384×12, 6 heads",
    published_params=22_000_000,  # DeiT-S, no distillation token
)
def civt_s(
    *,
    num_classes: int,
    in_chans: int,
    image_size: int,
    teacher_names: Sequence[str] = (),
    token_mode: TokenMode = "per-teacher",
    align: Mapping[str, str] | None = None,
    patch_size: int = 16,
    drop_path_rate: float = 0.1,
) -> VisionTransformer:
    """CivT-S (DeiT-S with one token per teacher)."""
    model_args: dict[str, Any] = dict(embed_dim=384, depth=12, num_heads=6)
    return build_civt(
        num_classes=num_classes,
        in_chans=in_chans,
        image_size=image_size,
        teacher_names=teacher_names,
        token_mode=token_mode,
        align=align,
        patch_size=patch_size,
        drop_path_rate=drop_path_rate,
        **model_args,
    )


@register_model("civt-nano", kind="student", description="CivT for CPUs: ViT 96×6, 3 heads")
def civt_nano(
    *,
    num_classes: int,
    in_chans: int,
    image_size: int,
    teacher_names: Sequence[str] = (),
    token_mode: TokenMode = "per-teacher",
    align: Mapping[str, str] | None = None,
    patch_size: int = 4,
    drop_path_rate: float = 0.0,
) -> VisionTransformer:
    """A CivT that trains on 16 px images on a CPU in minutes (no stochastic depth)."""
    model_args: dict[str, Any] = dict(embed_dim=96, depth=6, num_heads=3)
    return build_civt(
        num_classes=num_classes,
        in_chans=in_chans,
        image_size=image_size,
        teacher_names=teacher_names,
        token_mode=token_mode,
        align=align,
        patch_size=patch_size,
        drop_path_rate=drop_path_rate,
        **model_args,
    )
