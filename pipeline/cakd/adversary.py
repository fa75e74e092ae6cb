"""Multi-view robust training (Liu et al., ACCV 2022, Eqs. 7–9 and Alg. 1).

- :func:`multi_view`: the multi-view generator. Each sample of the student's batch is, with
  probability ``p``, replaced by ``Trans(x)`` with ``Trans`` drawn uniformly from colour jitter,
  random crop, rotation, patch mask and Gaussian noise (the teacher still sees ``x``).
- :class:`Discriminator`: three fully connected layers and a sigmoid, telling the teacher's
  tokens ``h_T`` from the student's projected tokens ``h'_S``, token by token.
- :func:`discriminator_loss` ``L_MAD = mean[−log D(h_T) − log(1 − D(h'_S))]`` (the
  discriminator's, stepped every :data:`DISCRIMINATOR_EVERY`-th iteration) and
  :func:`generator_loss` ``L_MVG = mean[log(1 − D(h'_S))]`` (the student's).

Both losses are computed from the discriminator's logits with ``logsigmoid``, which equals the
formulas but stays finite when ``D`` saturates at 0 or 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..runtime.errors import UserError

DISCRIMINATOR_EVERY = 5
"""The discriminator steps on every 5th iteration (Alg. 1); the student on every one."""


class Discriminator(nn.Module):
    """Three fully connected layers (LeakyReLU 0.2 between them) and a sigmoid, per token.

    Args:
        dim: token width ``D``.
        hidden: widths of the two hidden layers.
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (256, 128)) -> None:
        super().__init__()
        if len(hidden) != 2:
            raise UserError(
                f"the discriminator has three layers: give two hidden widths, not {list(hidden)}"
            )
        self.net = nn.Sequential(
            nn.Linear(dim, hidden[0]),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden[0], hidden[1]),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden[1], 1),
        )

    def logits(self, tokens: Tensor) -> Tensor:
        """Pre-sigmoid scores ``[B, N]`` of tokens ``[B, N, D]``."""
        return self.net(tokens).squeeze(-1)

    def forward(self, tokens: Tensor) -> Tensor:
        """``D(tokens)``: the probability ``[B, N]`` that each token is the teacher's."""
        return torch.sigmoid(self.logits(tokens))


def discriminator_loss(
    disc: Discriminator, teacher_tokens: Tensor, student_tokens: Tensor
) -> Tensor:
    """``L_MAD = mean[−log D(h_T) − log(1 − D(h'_S))]`` over the batch's tokens.

    Both inputs are detached: this loss trains only the discriminator.
    """
    real = disc.logits(teacher_tokens.detach())
    fake = disc.logits(student_tokens.detach())
    return (-F.logsigmoid(real) - F.logsigmoid(-fake)).mean()


def generator_loss(disc: Discriminator, student_tokens: Tensor) -> Tensor:
    """``L_MVG = mean[log(1 − D(h'_S))]``: minimized, it pushes ``D(h'_S)`` towards 1.

    Gradients reach the student (through ``student_tokens``) and also the discriminator's
    parameters: the discriminator's update must zero them first (its optimizer's
    ``zero_grad``), and the student's optimizer must not hold them.
    """
    return F.logsigmoid(-disc.logits(student_tokens)).mean()


@dataclass(frozen=True)
class MultiViewConfig:
    """The multi-view generator's settings (the paper names the transforms, not their sizes).

    Values out of range are a :class:`UserError` (they come from the command line).

    Args:
        p: probability that a sample is transformed (paper: 0.5).
        jitter: colour jitter strength: brightness, contrast and saturation factors drawn from
            ``U(1 − jitter, 1 + jitter)``.
        crop_scale: random crop's area fraction range, the crop resized back to the image size.
        rotation: rotation angle range ``±degrees`` (corners filled with 0).
        mask_patch: patch mask's square side in pixels.
        mask_ratio: fraction of the patches set to 0 (at least one).
        noise_std: Gaussian noise's standard deviation (images in [0, 1], clipped back).
    """

    p: float = 0.5
    jitter: float = 0.4
    crop_scale: tuple[float, float] = (0.5, 1.0)
    rotation: float = 15.0
    mask_patch: int = 4
    mask_ratio: float = 0.25
    noise_std: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise UserError(f"multi-view p must be in [0, 1], got {self.p}")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise UserError(
                f"multi-view crop scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}"
            )
        if self.mask_patch < 1 or not 0.0 < self.mask_ratio <= 1.0:
            raise UserError(
                "multi-view mask patch must be at least 1 pixel and mask ratio in (0, 1], got "
                f"{self.mask_patch} and {self.mask_ratio}"
            )


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def _colour_jitter(x: Tensor, cfg: MultiViewConfig, generator: torch.Generator) -> Tensor:
    n = x.shape[0]
    lo, hi = 1.0 - cfg.jitter, 1.0 + cfg.jitter
    brightness, contrast, saturation = (
        _uniform(n, lo, hi, generator).to(x.device).view(-1, 1, 1, 1) for _ in range(3)
    )
    x = x * brightness
    gray = x.mean(dim=1, keepdim=True)
    x = (x - gray.mean(dim=(2, 3), keepdim=True)) * contrast + gray.mean(dim=(2, 3), keepdim=True)
    if x.shape[1] > 1:  # saturation blends towards gray; a gray image has none to change
        gray = x.mean(dim=1, keepdim=True)
        x = gray + (x - gray) * saturation
    return x


def _warp(x: Tensor, theta: Tensor) -> Tensor:
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _random_crop(x: Tensor, cfg: MultiViewConfig, generator: torch.Generator) -> Tensor:
    n = x.shape[0]
    side = _uniform(n, *cfg.crop_scale, generator).sqrt()  # square crop of that area fraction
    # The crop's centre may move as far as keeps it inside the image (normalized coordinates).
    shift = (1 - side)[:, None] * (2 * torch.rand(n, 2, generator=generator) - 1)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = side
    theta[:, 1, 1] = side
    theta[:, :, 2] = shift
    return _warp(x, theta)


def _rotation(x: Tensor, cfg: MultiViewConfig, generator: torch.Generator) -> Tensor:
    n = x.shape[0]
    angle = _uniform(n, -cfg.rotation, cfg.rotation, generator) * math.pi / 180
    cos, sin = angle.cos(), angle.sin()
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin, cos
    return _warp(x, theta)


def _patch_mask(x: Tensor, cfg: MultiViewConfig, generator: torch.Generator) -> Tensor:
    n, _, h, w = x.shape
    rows, cols = -(-h // cfg.mask_patch), -(-w // cfg.mask_patch)
    count = rows * cols
    masked = max(1, round(cfg.mask_ratio * count))
    # The `masked` patches with the smallest random keys: exactly that many per sample.
    order = torch.rand(n, count, generator=generator).argsort(dim=1)
    drop = torch.zeros(n, count, dtype=torch.bool)
    drop.scatter_(1, order[:, :masked], True)
    drop = drop.view(n, 1, rows, cols).to(x.device)
    pixels = drop.repeat_interleave(cfg.mask_patch, 2).repeat_interleave(cfg.mask_patch, 3)
    return x.masked_fill(pixels[:, :, :h, :w], 0.0)


def _noise(x: Tensor, cfg: MultiViewConfig, generator: torch.Generator) -> Tensor:
    noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
    return x + cfg.noise_std * noise


TRANSFORMS: dict[str, Callable[[Tensor, MultiViewConfig, torch.Generator], Tensor]] = {
    "colour_jitter": _colour_jitter,
    "random_crop": _random_crop,
    "rotation": _rotation,
    "patch_mask": _patch_mask,
    "noise": _noise,
}
"""The multi-view generator's ``Trans`` set, in the order a draw indexes it."""


def multi_view(x: Tensor, cfg: MultiViewConfig, generator: torch.Generator) -> Tensor:
    """The student's view of images ``x`` ``[B, C, H, W]`` in [0, 1] (Eq. 7).

    Per sample: with probability ``cfg.p`` one transform drawn uniformly from
    :data:`TRANSFORMS`, else the sample unchanged. Every random number comes from
    ``generator`` (a CPU generator; the results move to ``x``'s device), so a seeded
    generator gives the same views on any device; the output is clipped to [0, 1].
    """
    n = x.shape[0]
    transformed = torch.rand(n, generator=generator) < cfg.p
    choice = torch.randint(len(TRANSFORMS), (n,), generator=generator)
    out = x.clone()
    for index, transform in enumerate(TRANSFORMS.values()):
        picked = (transformed & (choice == index)).nonzero().flatten()
        if picked.numel():
            rows = picked.to(x.device)
            out[rows] = transform(x[rows], cfg, generator).clamp(0.0, 1.0)
    return out
