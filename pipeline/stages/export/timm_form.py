"""A CivT student or ViT teacher under timm's names: a plain ``VisionTransformer`` or DeiT's
distilled ViT.

Our ViT blocks, patch embedding, norms and heads already carry timm's parameter names (the
model files follow timm's layout), so the form is a renaming of the prefix tokens and heads:

- one head (``cls`` or a teacher's token) → ``timm.models.vision_transformer.VisionTransformer``
  with ``reg_tokens=T`` (T distillation tokens). timm's sequence is ``[cls, registers, patches]``
  with the position embedding covering all of them (``no_embed_class=False``), as ours is
  ``[cls, distillation tokens, patches]``. Attention sees the sequence as a set, so any of our
  prefix tokens can take timm's class slot: the exported head's token goes first (with its
  position embedding row), the other prefix tokens become the registers, and the token's own
  linear head becomes ``head``. The chosen head's logits are then exact;
- ``mean`` with one distillation token (one teacher, or the shared token) →
  ``timm.models.deit.VisionTransformerDistilled``, whose eval output is the mean of its class
  and distillation heads, our ``mean``. With no distillation token ``mean`` is ``cls``;
- our ViT teachers (``vit-nano``, ``deit-ti``, ``deit-s``: a :class:`..models.vit.
  VisionTransformer` read out by its class token) → ``VisionTransformer`` with the same names,
  no register tokens: the mapping is direct.

timm itself is not imported: this writes state dicts with its names and the arguments that
build the matching model (``timm.create_model(name, pretrained=False, **model_args)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ...models.civt import CivT
from ...models.civt_aligned import AlignedCivT
from ...models.heads import CLS, MEAN
from ...models.normalize import NormalizedModel
from ...models.vit import Block, VisionTransformer
from ...models.vit_teachers import ViTTeacher
from ...runtime.errors import UserError

_NAMES = {192: "tiny", 384: "small", 768: "base"}
"""timm's size word per width; the preset name is only a template (the arguments decide)."""


@dataclass(frozen=True, slots=True)
class TimmForm:
    """A student as timm builds it."""

    model_name: str
    """A timm preset whose builder takes ``model_args`` (every architecture argument given)."""
    model_class: str
    """The class ``model_name`` builds (``VisionTransformer`` or ``VisionTransformerDistilled``)."""
    model_args: dict[str, Any]
    """Keyword arguments of ``timm.create_model`` besides the name."""
    state_dict: dict[str, Tensor]
    """The weights under timm's names; loads with ``strict=True``."""
    heads: tuple[str, ...]
    """Our heads the model's output is: ``("cls",)``, ``("<teacher>",)`` or ``("cls", t)``."""
    classifier: tuple[str, ...]
    """timm's classifier module names (``pretrained_cfg["classifier"]``)."""


def timm_form(model: NormalizedModel, head: str) -> TimmForm:
    """The timm form of ``model`` (a CivT student, or one of our ViT teachers, whose one head is
    ``head``) that outputs head ``head``.

    Raises:
        UserError: for the aligned CivT, students that are not ViTs, and ``mean`` over more
            than two distinct heads (timm's distilled ViT averages two).
    """
    body = model.body
    if isinstance(body, ViTTeacher):
        return _plain(model, body.vit, 0, head)
    if isinstance(body, AlignedCivT):
        raise UserError(
            f"{model.arch} with token mode 'aligned' (convolution and involution stems) has no "
            "timm form; export it with --format safetensors or --format torchscript"
        )
    if not isinstance(body, CivT):
        raise UserError(
            f"{model.arch} is not a ViT and has no timm form; export it with --format "
            "safetensors or --format torchscript"
        )
    plan = body.plan
    num_distill = plan.num_distill
    if head == MEAN and num_distill == 1:
        return _distilled(model, body, plan.teacher_names)
    if head == MEAN and num_distill > 1:
        raise UserError(
            f"--head mean averages {num_distill + 1} heads here; timm's distilled ViT averages "
            "two (one distillation token). Export --head cls or a teacher's head, or use "
            "--format torchscript"
        )
    # From here one head: mean over no distillation token, and every head of token mode
    # "cls", is the class head itself.
    if head in (CLS, MEAN) or plan.token_mode == "cls":
        front, exported = 0, CLS
    else:
        front, exported = 1 + plan.distill_index(head), head
    return _plain(model, body, front, exported)


def has_timm_form(model: NormalizedModel) -> bool:
    """Whether a teacher is one of our ViTs (timm form) rather than a torchvision model."""
    return isinstance(model.body, ViTTeacher)


def _common(
    model: NormalizedModel, body: VisionTransformer
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Architecture arguments shared by both forms, and the weights whose names already match."""
    block = body.blocks[0]
    assert isinstance(block, Block) and isinstance(body.patch_embed.proj, nn.Conv2d)
    dim = body.embed_dim
    args: dict[str, Any] = dict(
        img_size=int(model.model_args["image_size"]),
        patch_size=int(body.patch_embed.proj.kernel_size[0]),
        in_chans=int(model.model_args["in_chans"]),
        num_classes=int(model.model_args["num_classes"]),
        embed_dim=dim,
        depth=len(body.blocks),
        num_heads=block.attn.num_heads,
        mlp_ratio=block.mlp.fc1.out_features / dim,
        qkv_bias=True,
        no_embed_class=False,
        global_pool="token",
    )
    shared = {
        key: value.detach().clone()
        for key, value in body.state_dict().items()
        if key.startswith(("patch_embed.", "blocks.", "norm."))
    }
    return args, shared


def _name(kind: str, args: dict[str, Any]) -> str:
    size = _NAMES.get(int(args["embed_dim"]), "tiny")
    return f"deit_{size}_distilled_patch16_224" if kind == "deit" else f"vit_{size}_patch16_224"


def _plain(model: NormalizedModel, body: VisionTransformer, front: int, exported: str) -> TimmForm:
    """``VisionTransformer`` with the prefix token ``front`` in the class slot."""
    args, state = _common(model, body)
    parts: list[Tensor] = [body.cls_token]
    if isinstance(body, CivT):
        parts.append(body.dist_tokens)
    prefix = torch.cat(parts, dim=1).detach()
    num_prefix = prefix.shape[1]
    order = [front, *(i for i in range(num_prefix) if i != front)]
    tokens = prefix[:, order]
    pos = body.pos_embed.detach()
    state["cls_token"] = tokens[:, :1].clone()
    if num_prefix > 1:
        state["reg_token"] = tokens[:, 1:].clone()
    state["pos_embed"] = torch.cat([pos[:, order], pos[:, num_prefix:]], dim=1).clone()
    if front == 0:
        linear: nn.Module = body.head
    else:
        assert isinstance(body, CivT)
        linear = body.dist_heads[front - 1]
    assert isinstance(linear, nn.Linear)
    state["head.weight"] = linear.weight.detach().clone()
    state["head.bias"] = linear.bias.detach().clone()
    args.update(class_token=True, reg_tokens=num_prefix - 1)
    return TimmForm(
        model_name=_name("vit", args),
        model_class="timm.models.vision_transformer.VisionTransformer",
        model_args=args,
        state_dict=state,
        heads=(exported,),
        classifier=("head",),
    )


def _distilled(model: NormalizedModel, body: CivT, teachers: tuple[str, ...]) -> TimmForm:
    """``VisionTransformerDistilled``: class and the one distillation token, heads averaged."""
    args, state = _common(model, body)
    state["cls_token"] = body.cls_token.detach().clone()
    state["dist_token"] = body.dist_tokens.detach().clone()
    state["pos_embed"] = body.pos_embed.detach().clone()
    dist_head = body.dist_heads[0]
    assert isinstance(dist_head, nn.Linear)
    state["head.weight"] = body.head.weight.detach().clone()
    state["head.bias"] = body.head.bias.detach().clone()
    state["head_dist.weight"] = dist_head.weight.detach().clone()
    state["head_dist.bias"] = dist_head.bias.detach().clone()
    return TimmForm(
        model_name=_name("deit", args),
        model_class="timm.models.deit.VisionTransformerDistilled",
        model_args=args,
        state_dict=state,
        heads=(CLS, *teachers),
        classifier=("head", "head_dist"),
    )
