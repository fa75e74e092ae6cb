"""Convolution and involution stems: small networks that turn an image into a grid of tokens.

Co-advise's token inductive-bias alignment (Ren et al., CVPR 2022; the official code's
``embed_conv`` / ``embed_inv``) replaces the ViT's linear patch embedding with two stems:

- convolution stem: conv 7×7/2 (→64, no bias)–BN–ReLU, [conv 3×3 64→64–BN–ReLU] ×2;
- involution stem: RedNet-26's stem without its max-pool: conv 3×3/2 (→32)–BN–ReLU,
  involution(32, kernel 3, 16 channels per group, reduction 4)–BN–ReLU, conv 3×3 (32→64)–BN–ReLU;

each followed by a projection convolution with kernel = stride = P/2 (64→D, with bias), so both
make one D-dim embedding per P×P patch. Hence the patch rule: P even and at least 2 (the stems
halve the image, the projection covers the other factor P/2), and the image side a multiple of P.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..runtime.errors import UserError
from .involution import Involution

STEM_CHANNELS = 64
"""Channels every stem hands to its projection."""


def conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    """Conv (no bias, "same" padding) → BN → ReLU, as a list to splice into a Sequential."""
    return [
        nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


def involution_stem_layers(in_chans: int, channels: int, stride: int) -> list[nn.Module]:
    """RedNet's stem without max-pool: 3×3 conv (stride) → 3×3 involution → 3×3 conv."""
    half = channels // 2
    layers = conv_bn_relu(in_chans, half, 3, stride)
    layers += [Involution(half, 3, 1), nn.BatchNorm2d(half), nn.ReLU(inplace=True)]
    layers += conv_bn_relu(half, channels, 3)
    return layers


def check_stem_patch_size(patch_size: int) -> None:
    """Raise :class:`UserError` unless the stems can make ``patch_size`` patches (even, >= 2)."""
    if patch_size < 2 or patch_size % 2 != 0:
        raise UserError(
            f"token mode 'aligned' needs an even patch size of at least 2 (its stems halve the "
            f"image, then project (P/2)×(P/2) squares); got {patch_size}"
        )


class _ProjectedStem(nn.Module):
    """``body`` (stride 2, :data:`STEM_CHANNELS` out) then the P/2 × P/2 projection to ``dim``."""

    def __init__(self, body: list[nn.Module], dim: int, patch_size: int) -> None:
        super().__init__()
        check_stem_patch_size(patch_size)
        self.body = nn.Sequential(*body)
        self.proj = nn.Conv2d(STEM_CHANNELS, dim, patch_size // 2, patch_size // 2)
        # As the official code: Kaiming-normal (fan-in) convolutions, default BN and biases.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: Tensor) -> Tensor:
        """The token grid ``[B, dim, H / P, W / P]``."""
        return self.proj(self.body(x))


class ConvStem(_ProjectedStem):
    """The convolution stem (see the module docstring).

    Args:
        in_chans: input channels.
        dim: token width D.
        patch_size: P, even and at least 2.
    """

    def __init__(self, in_chans: int, dim: int, patch_size: int) -> None:
        body = conv_bn_relu(in_chans, STEM_CHANNELS, 7, 2)
        body += conv_bn_relu(STEM_CHANNELS, STEM_CHANNELS, 3)
        body += conv_bn_relu(STEM_CHANNELS, STEM_CHANNELS, 3)
        super().__init__(body, dim, patch_size)


class InvolutionStem(_ProjectedStem):
    """The involution stem: RedNet-26's without max-pool (see the module docstring).

    Args:
        in_chans: input channels.
        dim: token width D.
        patch_size: P, even and at least 2.
    """

    def __init__(self, in_chans: int, dim: int, patch_size: int) -> None:
        super().__init__(involution_stem_layers(in_chans, STEM_CHANNELS, 2), dim, patch_size)
