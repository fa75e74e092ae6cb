"""A plain Vision Transformer (Dosovitskiy et al., 2021; DeiT, Touvron et al., 2021).

https://arxiv.org/abs/2010.11929, https://arxiv.org/abs/2012.12877. Built bottom-up: patch
embedding, attention, MLP, block, model. Variants override two hooks, as timm's DeiT does:
``_pos_embed`` (which tokens are prepended) and ``forward_head`` (what is read out); a variant
with another patch embedding passes ``embed_layer`` and overrides ``tokens``. Its own output is
``{"cls": logits}``, the student contract with no distillation token.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` patches → ``[B, N, dim]`` by one strided convolution."""

    def __init__(self, image_size: int, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.num_patches = (image_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, dim, patch_size, patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention (fused scaled-dot-product kernel)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).unbind(2)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        )
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """Linear → GELU → Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth: in training, drop a sample's residual branch with probability ``p``."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


EmbedLayer = Callable[[int, int, int, int], nn.Module]
"""Builds a patch embedding from ``(image_size, patch_size, in_chans, dim)``; it must make one
token per ``patch_size`` square (see :class:`PatchEmbed`)."""


class VisionTransformer(nn.Module):
    """ViT with a class token; ``forward`` returns ``{"cls": logits}``.

    Args:
        image_size: square input side (a multiple of ``patch_size``).
        patch_size: patch side.
        in_chans: input channels.
        num_classes: classifier outputs.
        embed_dim: token width.
        depth: transformer blocks.
        num_heads: attention heads (``embed_dim`` must divide by it).
        mlp_ratio: MLP hidden width / ``embed_dim``.
        drop_path_rate: stochastic depth of the last block (linear from 0).
        num_prefix_tokens: tokens before the patches that get a position embedding; subclasses
            with extra tokens pass more.
        embed_layer: the patch embedding's builder (:class:`PatchEmbed` by default).
    """

    inference_head = "cls"
    """The headline inference head (see :func:`.heads.inference_head`)."""

    def __init__(
        self,
        *,
        image_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        num_prefix_tokens: int = 1,
        embed_layer: EmbedLayer = PatchEmbed,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.num_prefix_tokens = num_prefix_tokens
        self.patch_size = patch_size
        self.patch_embed = embed_layer(image_size, patch_size, in_chans, embed_dim)
        num_patches = (image_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + num_prefix_tokens, embed_dim))
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.Sequential(*(Block(embed_dim, num_heads, mlp_ratio, r) for r in rates))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)
        self.apply(self._init_module)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        """Parameters the optimizer must not decay (beyond 1-D ones): the prefix tokens and
        position embeddings are learned inputs, not weights, so shrinking them only hurts."""
        return {"pos_embed", "cls_token"}

    @staticmethod
    def _init_module(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def _pos_embed(self, x: Tensor) -> Tensor:
        """Prepend the prefix tokens to the patch tokens and add position embeddings."""
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.pos_embed

    def tokens(self, x: Tensor) -> Tensor:
        """The first block's input: prefix and patch tokens plus position embedding."""
        return self._pos_embed(self.patch_embed(x))

    def forward_features(self, x: Tensor) -> Tensor:
        """All tokens after the last block and norm, ``[B, prefix + N, dim]``."""
        return self.norm(self.blocks(self.tokens(x)))

    def forward_head(self, x: Tensor) -> dict[str, Tensor]:
        """Read the class token out."""
        return {"cls": self.head(x[:, 0])}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.forward_head(self.forward_features(x))
