"""Involution (Li et al., CVPR 2021, "Involution: Inverting the Inherence of Convolution").

https://arxiv.org/abs/2103.06255. Convolution shares one kernel over space and keeps a kernel per
channel; involution does the opposite: a kernel is *generated at every pixel* from that pixel's
features and shared by all channels of a group. With reduction ratio r and G = C / 16 groups:

    kernel(x)[g, :, i, j] = W2 · ReLU(BN(W1 · x[:, i, j]))      # C -> C/r -> K*K*G
    y[c, i, j] = Σ_{u,v} kernel[g(c), (u, v), i, j] · x[c, i*s + u - p, j*s + v - p]

For stride s > 1 the kernel is generated from the s×s average-pooled input.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class Involution(nn.Module):
    """Involution over ``channels`` channels.

    Args:
        channels: input and output channels (a multiple of ``group_channels``).
        kernel_size: odd spatial extent K of the generated kernels (7 in RedNet blocks).
        stride: spatial stride; the kernel is generated from an average-pooled input.
        reduction: channel reduction r of the kernel-generating bottleneck.
        group_channels: channels that share one generated kernel.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 7,
        stride: int = 1,
        *,
        reduction: int = 4,
        group_channels: int = 16,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"involution kernel size must be odd, got {kernel_size}")
        if channels % group_channels != 0:
            raise ValueError(
                f"involution channels ({channels}) must be a multiple of group_channels "
                f"({group_channels})"
            )
        self.channels = channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.group_channels = group_channels
        self.groups = channels // group_channels
        hidden = max(channels // reduction, 1)
        self.reduce = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
        )
        self.span = nn.Conv2d(hidden, kernel_size * kernel_size * self.groups, 1)

    def kernel(self, x: Tensor) -> Tensor:
        """The generated kernels, ``[B, G, K*K, H_out, W_out]``."""
        if self.stride > 1:
            # ceil_mode keeps the pooled grid equal to unfold's ceil(H / s) for odd sizes too.
            x = F.avg_pool2d(x, self.stride, self.stride, ceil_mode=True, count_include_pad=False)
        weight = self.span(self.reduce(x))
        b, _, h, w = weight.shape
        return weight.view(b, self.groups, self.kernel_size**2, h, w)

    def forward(self, x: Tensor) -> Tensor:
        weight = self.kernel(x)
        b, g, kk, h, w = weight.shape
        patches = F.unfold(x, self.kernel_size, padding=self.kernel_size // 2, stride=self.stride)
        patches = patches.view(b, g, self.group_channels, kk, h, w)
        return (weight.unsqueeze(2) * patches).sum(dim=3).view(b, self.channels, h, w)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"groups={self.groups}"
        )
