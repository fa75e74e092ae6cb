"""The two projectors that map a CNN student's feature map into a ViT teacher's spaces.

Liu et al., "Cross-Architecture Knowledge Distillation", ACCV 2022, Eqs. 1–6 (docs/method.md has
the equations and every choice the paper leaves open). Both exist only in training.

- :class:`PCAProjector` (partially cross attention, Eqs. 1–4): three 3×3 convolutions give the
  student's ``Q_S, K_S, V_S``; ``g(·)`` swaps a random half of their elements for the teacher's;
  ``Attn_T = softmax(Q_T K_Tᵀ/√d)·V_T``, ``PCAttn_S = softmax(g(Q_S) g(K_S)ᵀ/√d)·g(V_S)`` and
  ``L_proj1 = ‖Attn_T − PCAttn_S‖² + ‖V_T V_Tᵀ/√d − g(V_S) g(V_S)ᵀ/√d‖²`` (two terms:
  :class:`PCALosses`).
- :class:`GLProjector` (group-wise linear, Eqs. 5–6): one fully connected layer ``c → D`` per
  ``4×4`` tile of the grid, shared by the tile's positions; ``L_proj2 = MSE(h_T, h'_S)``.

The reductions, chosen so that both terms of ``L_proj1`` reach the student map with gradients
of one order (:func:`token_sq_error`): the attention term is each token's squared error summed
over its ``d`` outputs per head, averaged over batch, heads and tokens; the value term (an
``N×N`` relation, no per-token vector) is a mean over its entries. With a plain mean over the
``N×d`` attention outputs too, the value term's gradient on ``h_S`` was 9× (N = 16) to 27×
(N = 196) the attention term's; with the softmax maps alone (no ``V``) and means, 200× to
27,000×; as reduced here the attention term's is 3.5× and 2.4× the value term's
(``tests/test_cakd_parts.py`` pins the ratio within 10×). ``L_proj2`` is a plain mean.
"""

from __future__ import annotations

import math
from typing import NamedTuple

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


def attention_output(q: Tensor, k: Tensor, v: Tensor, num_heads: int) -> Tensor:
    """``softmax(Q Kᵀ / √d)·V`` per head, ``[B, heads, N, d]`` (Eqs. 2–3)."""
    return attention_map(q, k, num_heads) @ _heads(v, num_heads)


def value_relation(v: Tensor, num_heads: int) -> Tensor:
    """``V Vᵀ / √d`` per head, ``[B, heads, N, N]`` (no softmax, as Eq. 4 writes it)."""
    vh = _heads(v, num_heads)
    return vh @ vh.transpose(-2, -1) / math.sqrt(vh.shape[-1])


def token_sq_error(student: Tensor, teacher: Tensor) -> Tensor:
    """``(student − teacher)²`` summed over the last axis (a token's outputs in one head) and
    averaged over every other axis (batch, heads, tokens)."""
    return (student - teacher).pow(2).sum(-1).mean()


class PCALosses(NamedTuple):
    """``L_proj1``'s two terms (both scalars); ``L_proj1 = attn + value``."""

    attn: Tensor
    """``‖Attn_T − PCAttn_S‖²``: the attention outputs (softmax times V)."""
    value: Tensor
    """``‖V_T V_Tᵀ/√d − g(V_S) g(V_S)ᵀ/√d‖²``: the value relations."""

    @property
    def total(self) -> Tensor:
        """``L_proj1``."""
        return self.attn + self.value


def _check_dims(dim: int, num_heads: int, grid: Grid) -> None:
    if num_heads < 1 or dim % num_heads != 0:
        raise ValueError(f"dim {dim} must be a positive multiple of num_heads {num_heads}")
    if min(grid) < 1:
        raise ValueError(f"grid {grid} must have positive sides")


class PCAProjector(nn.Module):
    """Partially cross attention projector (Eqs. 1–4): returns ``L_proj1``'s terms.

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

    def forward(self, h_s: Tensor, teacher: TeacherFeatures) -> PCALosses:
        """``L_proj1``'s two terms for the student map ``h_s`` and the teacher's features."""
        q, k, v = self.project(h_s)
        if q.shape != teacher.q.shape:
            raise ValueError(f"student projections {tuple(q.shape)} vs teacher {teacher.q.shape}")
        if self.training and self.replace_p > 0:
            q = partial_replace(q, teacher.q, self.replace_p)
            k = partial_replace(k, teacher.k, self.replace_p)
            v = partial_replace(v, teacher.v, self.replace_p)
        heads = self.num_heads
        attn_t = attention_output(teacher.q, teacher.k, teacher.v, heads)
        attn_s = attention_output(q, k, v, heads)
        values_t = value_relation(teacher.v, heads)
        return PCALosses(
            attn=token_sq_error(attn_s, attn_t),
            value=F.mse_loss(value_relation(v, heads), values_t),
        )


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


class Projectors(nn.Module):
    """The projectors of one run: PCA, GL or both (the paper's Fig. 3a ablation).

    ``forward(h_s, teacher)`` gives ``(PCALosses | None, h'_S | None)``: the PCA projector's
    two terms and the GL projector's tokens, each None when that projector is left out.
    """

    def __init__(self, pca: PCAProjector | None, gl: GLProjector | None) -> None:
        super().__init__()
        if pca is None and gl is None:
            raise ValueError("at least one projector is needed")
        self.pca = pca
        self.gl = gl

    @classmethod
    def build(
        cls,
        which: str,
        *,
        in_channels: int,
        dim: int,
        num_heads: int,
        grid: Grid,
        replace_p: float = 0.5,
        group: int = 4,
        dropout: float = 0.1,
    ) -> Projectors:
        """``which`` = ``both``, ``pca`` or ``gl`` (``--projectors``), sized for the student
        map's ``in_channels`` and the teacher's ``dim``, ``num_heads`` and ``grid``."""
        if which not in ("both", "pca", "gl"):
            raise ValueError(f"projectors must be both, pca or gl, got {which!r}")
        pca = gl = None
        if which != "gl":
            pca = PCAProjector(in_channels, dim, num_heads, grid, replace_p=replace_p)
        if which != "pca":
            gl = GLProjector(in_channels, dim, grid, group=group, dropout=dropout)
        return cls(pca, gl)

    def forward(
        self, h_s: Tensor, teacher: TeacherFeatures
    ) -> tuple[PCALosses | None, Tensor | None]:
        pca = self.pca(h_s, teacher) if self.pca is not None else None
        projected = self.gl(h_s) if self.gl is not None else None
        return pca, projected
