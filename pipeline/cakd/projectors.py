"""The two projectors that map a CNN student's feature map into a ViT teacher's spaces.

Liu et al., "Cross-Architecture Knowledge Distillation", ACCV 2022, Eqs. 1–6 (docs/method.md has
the equations and every choice the paper leaves open). Both exist only in training.

- :class:`PCAProjector` (partially cross attention, Eqs. 1–4): three 3×3 convolutions give the
  student's ``Q_S, K_S, V_S``; ``g(·)`` swaps a random half of their elements for the teacher's;
  ``L_proj1 = MSE(Attn_T, PCAttn_S) + MSE(V_T V_Tᵀ/√d, g(V_S) g(V_S)ᵀ/√d)``.
- :class:`GLProjector` (group-wise linear, Eqs. 5–6): one fully connected layer ``c → D`` per
  ``4×4`` tile of the grid, shared by the tile's positions; ``L_proj2 = MSE(h_T, h'_S)``.

Every "‖·‖²" of the paper is a mean squared error here (mean over batch, heads and positions),
so the loss does not grow with the batch, the grid or the width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..runtime.errors import UserError
from .features import TeacherFeatures

Grid = tuple[int, int]


def resize_to_grid(feature_map: Tensor, grid: Grid) -> Tensor:
    """The student map ``[B, c, h', w']`` on the teacher's grid ``(h, w)``.

    Equal sides: unchanged. A map at least as large on both sides: adaptive average pooling
    (each teacher position averages the student positions it covers, so nothing is skipped).
    Otherwise (smaller on a side): bilinear interpolation (``align_corners=False``).
    """
    h, w = feature_map.shape[-2:]
    if (h, w) == tuple(grid):
        return feature_map
    if h >= grid[0] and w >= grid[1]:
        return F.adaptive_avg_pool2d(feature_map, grid)
    return F.interpolate(feature_map, size=grid, mode="bilinear", align_corners=False)


def replacement_mask(
    shape: torch.Size, p: float, *, device: torch.device, generator: torch.Generator | None = None
) -> Tensor:
    """``g(·)``'s mask: True where ``u ≥ 1 − p`` for ``u ~ U(0, 1)`` drawn per element (the
    paper's rule ``u ≥ 0.5`` at ``p = 0.5``), so each element is replaced with probability
    ``p``. A new mask per call: one per training step."""
    if generator is None:
        u = torch.rand(shape, device=device)
    else:
        u = torch.rand(shape, generator=generator, device=generator.device).to(device)
    return u >= 1.0 - p


def partial_replace(
    student: Tensor, teacher: Tensor, p: float, *, generator: torch.Generator | None = None
) -> Tensor:
    """``g(student)``: each element replaced by ``teacher``'s with probability ``p`` (the
    teacher's elements carry no gradient; the student's kept ones do)."""
    mask = replacement_mask(student.shape, p, device=student.device, generator=generator)
    return torch.where(mask, teacher.detach(), student)


def _heads(x: Tensor, num_heads: int) -> Tensor:
    """``[B, N, D]`` → ``[B, heads, N, D/heads]`` (head ``i`` is ``x[..., i*d:(i+1)*d]``)."""
    b, n, d = x.shape
    return x.view(b, n, num_heads, d // num_heads).transpose(1, 2)


def attention_map(q: Tensor, k: Tensor, num_heads: int) -> Tensor:
    """``softmax(Q Kᵀ / √d)`` per head, ``[B, heads, N, N]``, with ``d = D / heads`` (the
    scale the teacher's own attention uses)."""
    qh, kh = _heads(q, num_heads), _heads(k, num_heads)
    return torch.softmax(qh @ kh.transpose(-2, -1) / math.sqrt(qh.shape[-1]), dim=-1)


def value_relation(v: Tensor, num_heads: int) -> Tensor:
    """``V Vᵀ / √d`` per head, ``[B, heads, N, N]`` (no softmax, as Eq. 4 writes it)."""
    vh = _heads(v, num_heads)
    return vh @ vh.transpose(-2, -1) / math.sqrt(vh.shape[-1])


def _check_dims(dim: int, num_heads: int, grid: Grid) -> None:
    if num_heads < 1 or dim % num_heads != 0:
        raise ValueError(f"dim {dim} must be a positive multiple of num_heads {num_heads}")
    if min(grid) < 1:
        raise ValueError(f"grid {grid} must have positive sides")


class PCAProjector(nn.Module):
    """Partially cross attention projector (Eqs. 1–4): returns ``L_proj1``.

    The student map is first put on the teacher's grid (:func:`resize_to_grid`), then three
    3×3 convolutions (padding 1, with bias) ``c → D`` give ``Q_S, K_S, V_S`` ``[B, N, D]``. In
    training ``g(·)`` (:func:`partial_replace`) swaps each of their elements for the teacher's
    with probability ``replace_p``, a fresh mask every call; in eval nothing is replaced.

    Args:
        in_channels: the student map's channels ``c``.
        dim: the teacher's token width ``D``.
        num_heads: the teacher's heads in the tapped block (attention per head, ``d = D/heads``).
        grid: the teacher's patch grid ``(h, w)``.
        replace_p: ``g(·)``'s replacement probability (paper: 0.5).
    """

    def __init__(
        self, in_channels: int, dim: int, num_heads: int, grid: Grid, *, replace_p: float = 0.5
    ) -> None:
        super().__init__()
        _check_dims(dim, num_heads, grid)
        if not 0.0 <= replace_p <= 1.0:
            raise UserError(f"the replacement probability must be in [0, 1], got {replace_p}")
        self.num_heads = num_heads
        self.grid: Grid = (grid[0], grid[1])
        self.replace_p = replace_p
        self.to_q = nn.Conv2d(in_channels, dim, 3, padding=1)
        self.to_k = nn.Conv2d(in_channels, dim, 3, padding=1)
        self.to_v = nn.Conv2d(in_channels, dim, 3, padding=1)

    def project(self, h_s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``Q_S, K_S, V_S`` ``[B, N, D]`` of the student map ``h_s`` ``[B, c, h', w']``."""
        x = resize_to_grid(h_s, self.grid)
        flat = [conv(x).flatten(2).transpose(1, 2) for conv in (self.to_q, self.to_k, self.to_v)]
        return flat[0], flat[1], flat[2]

    def forward(self, h_s: Tensor, teacher: TeacherFeatures) -> Tensor:
        """``L_proj1`` (a scalar) for the student map ``h_s`` and the teacher's features."""
        q, k, v = self.project(h_s)
        if q.shape != teacher.q.shape:
            raise ValueError(f"student projections {tuple(q.shape)} vs teacher {teacher.q.shape}")
        if self.training and self.replace_p > 0:
            q = partial_replace(q, teacher.q, self.replace_p)
            k = partial_replace(k, teacher.k, self.replace_p)
            v = partial_replace(v, teacher.v, self.replace_p)
        heads = self.num_heads
        attn_t = attention_map(teacher.q, teacher.k, heads)
        attn_s = attention_map(q, k, heads)
        values = F.mse_loss(value_relation(v, heads), value_relation(teacher.v, heads))
        return F.mse_loss(attn_s, attn_t) + values


class GLProjector(nn.Module):
    """Group-wise linear projector (Eqs. 5–6): ``h'_S`` ``[B, N, D]`` from the student map.

    The grid (the teacher's, after :func:`resize_to_grid`) is cut into ``group × group`` tiles
    of neighbouring positions, ceil-divided: ``⌈h/group⌉ · ⌈w/group⌉`` tiles, those on the far
    edges smaller when a side is not a multiple of ``group`` (ViT-B/16 at 224 px: 14×14 → 16
    tiles, the paper's 16 FC layers). Each tile has its own fully connected layer ``c → D``
    shared by its positions; all run as one batched matrix product over the tiles (the grid is
    zero-padded to whole tiles and the padding's outputs dropped). Dropout acts on the input.

    Args:
        in_channels: the student map's channels ``c``.
        dim: the teacher's token width ``D``.
        grid: the teacher's patch grid ``(h, w)``.
        group: tile side (paper: 4).
        dropout: dropout probability on the projector's input.
    """

    def __init__(
        self, in_channels: int, dim: int, grid: Grid, *, group: int = 4, dropout: float = 0.1
    ) -> None:
        super().__init__()
        _check_dims(dim, 1, grid)
        if group < 1:
            raise UserError(f"the GL projector's tile side must be at least 1, got {group}")
        self.grid: Grid = (grid[0], grid[1])
        self.group = group
        self.tiles = (-(-grid[0] // group), -(-grid[1] // group))
        count = self.tiles[0] * self.tiles[1]
        # Initialized as nn.Linear initializes one layer: U(-1/√c, 1/√c).
        bound = 1 / math.sqrt(in_channels)
        self.weight = nn.Parameter(torch.empty(count, in_channels, dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(count, dim).uniform_(-bound, bound))
        self.dropout = nn.Dropout(dropout)

    def tile_index(self) -> Tensor:
        """The tile (FC layer) of every grid position, row-major, ``[N]``."""
        rows = torch.arange(self.grid[0]) // self.group
        cols = torch.arange(self.grid[1]) // self.group
        return (rows[:, None] * self.tiles[1] + cols[None, :]).flatten()

    def forward(self, h_s: Tensor) -> Tensor:
        x = self.dropout(resize_to_grid(h_s, self.grid))
        b, c, h, w = x.shape
        g, (th, tw) = self.group, self.tiles
        x = F.pad(x, (0, tw * g - w, 0, th * g - h))
        # [B, c, th, g, tw, g] → [tiles, B·g·g, c]: each tile's positions in one matrix.
        x = x.view(b, c, th, g, tw, g).permute(2, 4, 0, 3, 5, 1).reshape(th * tw, b * g * g, c)
        y = torch.baddbmm(self.bias[:, None, :], x, self.weight)
        d = y.shape[-1]
        y = y.view(th, tw, b, g, g, d).permute(2, 0, 3, 1, 4, 5).reshape(b, th * g, tw * g, d)
        return y[:, :h, :w].reshape(b, h * w, d)


def gl_loss(projected: Tensor, tokens: Tensor) -> Tensor:
    """``L_proj2 = MSE(h_T, h'_S)`` (mean over batch, positions and width)."""
    return F.mse_loss(projected, tokens.detach())
