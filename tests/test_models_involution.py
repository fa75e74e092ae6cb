"""Involution: the unfold implementation equals a direct loop; RedNet and nano structure."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from civt_pipe.pipeline.models.involution import Involution
from civt_pipe.pipeline.models.nano import NanoNet
from civt_pipe.pipeline.models.rednet import InvolutionBottleneck, RedNet


def involution_by_loop(module: Involution, x: torch.Tensor) -> torch.Tensor:
    """y[b, c, i, j] = Σ_{u,v} kernel[b, g(c), u*K+v, i, j] · x_pad[b, c, i*s+u, j*s+v]."""
    kernel = module.kernel(x)
    k, s, p = module.kernel_size, module.stride, module.kernel_size // 2
    xp = F.pad(x, (p, p, p, p))
    b, c = x.shape[:2]
    h_out, w_out = kernel.shape[-2:]
    out = torch.zeros(b, c, h_out, w_out, dtype=x.dtype)
    for ch in range(c):
        g = ch // module.group_channels
        for i in range(h_out):
            for j in range(w_out):
                for u in range(k):
                    for v in range(k):
                        out[:, ch, i, j] += (
                            kernel[:, g, u * k + v, i, j] * xp[:, ch, i * s + u, j * s + v]
                        )
    return out


@pytest.mark.parametrize(
    ("channels", "kernel_size", "stride", "size"),
    [(32, 3, 1, 6), (16, 7, 1, 5), (32, 7, 2, 8), (16, 3, 2, 7)],
)
def test_unfold_involution_equals_direct_loop(
    channels: int, kernel_size: int, stride: int, size: int
) -> None:
    torch.manual_seed(1)
    module = Involution(channels, kernel_size, stride).double().eval()
    # Non-trivial BN statistics so the kernel branch is not near zero.
    module.reduce[1].running_mean.uniform_(-0.5, 0.5)
    x = torch.randn(2, channels, size, size, dtype=torch.float64)
    fast = module(x)
    slow = involution_by_loop(module, x)
    assert fast.shape == (2, channels, -(-size // stride), -(-size // stride))
    torch.testing.assert_close(fast, slow)


def test_strided_kernel_is_generated_from_average_pooled_input() -> None:
    torch.manual_seed(2)
    module = Involution(16, 3, 2).eval()
    x = torch.randn(1, 16, 8, 8)
    pooled = F.avg_pool2d(x, 2)
    expected = module.span(module.reduce(pooled)).view(1, 1, 9, 4, 4)
    torch.testing.assert_close(module.kernel(x), expected)


def test_involution_shares_kernel_within_group_of_16_channels() -> None:
    module = Involution(64, 7, 1)
    assert module.groups == 4
    assert module.span.out_channels == 49 * 4
    assert module.reduce[0].out_channels == 16  # reduction ratio 4


def test_rednet_blocks_use_7x7_involution_with_stride_in_involution() -> None:
    model = RedNet((1, 2, 4, 1), num_classes=10)
    blocks = [m for m in model.modules() if isinstance(m, InvolutionBottleneck)]
    assert len(blocks) == 8
    assert all(b.inv.kernel_size == 7 for b in blocks)
    assert [b.inv.stride for b in blocks] == [1, 2, 1, 2, 1, 1, 1, 2]
    assert not any(
        isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in model.stages.modules()
    )


def test_nano_twins_have_same_depth_and_width_and_differ_in_spatial_operator() -> None:
    cnn = NanoNet("conv", num_classes=10, in_chans=1)
    inn = NanoNet("involution", num_classes=10, in_chans=1)
    assert len(cnn.stages) == len(inn.stages)
    assert [b.mix.out_channels for b in cnn.stages] == [b.mix.out_channels for b in inn.stages]
    assert all(isinstance(b.spatial, nn.Conv2d) for b in cnn.stages)
    assert all(isinstance(b.spatial, Involution) for b in inn.stages)
    assert sum(p.numel() for p in cnn.parameters()) < 300_000
