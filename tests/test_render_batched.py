"""Batched rendering (`render_unmixed`, `apply_randaug_batch`) against the per-sample rendering
it replaced: the same bits for every view, over seeds, recipes, channel counts and sizes."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as F
from torchvision.transforms import InterpolationMode

from civt_pipe.pipeline.augment.config import AugmentConfig, crop_flip, deit, small
from civt_pipe.pipeline.augment.ops import NUM_OPS, apply_randaug, apply_randaug_batch
from civt_pipe.pipeline.augment.params import param_row, sample_block_params
from civt_pipe.pipeline.augment.render import render_block, render_unmixed, view_digests

_INTERPOLATION = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}


def _per_sample_view(
    image: torch.Tensor, row: Mapping[str, np.ndarray], cfg: AugmentConfig
) -> torch.Tensor:
    """The per-sample rendering of one unmixed view, as stores up to issue 14 were made."""
    size = cfg.image_size
    top, left, height, width = (int(v) for v in np.asarray(row["crop"]))
    view = F.resized_crop(
        image,
        top,
        left,
        height,
        width,
        [size, size],
        interpolation=_INTERPOLATION[cfg.interpolation],
        antialias=True,
    )
    if int(row["flip"]):
        view = F.horizontal_flip(view)
    view = apply_randaug(
        view,
        [int(v) for v in np.asarray(row["ra_ops"]).reshape(-1)],
        [float(v) for v in np.asarray(row["ra_mag"]).reshape(-1)],
        fill=cfg.ra_fill,
    )
    out = view.to(torch.float32).div_(255.0)
    e_top, e_left, e_height, e_width = (int(v) for v in np.asarray(row["erase"]))
    if e_height > 0 and e_width > 0:
        gen = torch.Generator().manual_seed(int(row["erase_seed"]))
        noise = torch.rand((out.shape[0], e_height, e_width), generator=gen)
        out[:, e_top : e_top + e_height, e_left : e_left + e_width] = noise
    return out


def _images(n: int, channels: int, seed: int) -> list[torch.Tensor]:
    """Images of varied sizes (some smaller than the view, some square, some wide)."""
    gen = torch.Generator().manual_seed(seed)
    sides = [(8, 8), (16, 16), (13, 29), (40, 24), (5, 7), (64, 64)]
    out = []
    for i in range(n):
        height, width = sides[i % len(sides)]
        # Smooth structure plus noise, so the ops see real edges and histograms.
        base = torch.randint(0, 256, (channels, 1, 1), generator=gen, dtype=torch.int32)
        ramp = torch.arange(width, dtype=torch.int32).view(1, 1, width) * 7
        noise = torch.randint(0, 60, (channels, height, width), generator=gen, dtype=torch.int32)
        out.append(((base + ramp + noise) % 256).to(torch.uint8))
    return out


RECIPES = {
    "deit": deit,
    "small": small,
    "crop-flip": crop_flip,
    # Every op on every view with a fixed magnitude: groups of equal ops and arguments.
    "all-ops": lambda size: AugmentConfig(
        image_size=size, randaug_ops=3, randaug_prob=1.0, randaug_mstd=0.0, erase_prob=0.5
    ),
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
@pytest.mark.parametrize(("channels", "size"), [(1, 16), (3, 16), (3, 24)])
def test_batched_views_equal_per_sample_views(recipe: str, channels: int, size: int) -> None:
    cfg = RECIPES[recipe](size)
    n = 16
    images = _images(n, channels, seed=size + channels)
    keys = [f"s{i}" for i in range(n)]
    hws = [(int(im.shape[1]), int(im.shape[2])) for im in images]
    for view in range(2):
        block = sample_block_params(11, view, keys, list(range(n)), hws, n, cfg)
        batched = render_unmixed(images, block, cfg)
        expected = torch.stack(
            [_per_sample_view(images[i], param_row(block, i), cfg) for i in range(n)]
        )
        assert torch.equal(batched, expected)
        assert np.array_equal(view_digests(batched), view_digests(expected))


@pytest.mark.parametrize("channels", [1, 3])
def test_every_op_in_a_group_equals_the_op_alone(channels: int) -> None:
    images = torch.stack([F.resize(im, [12, 12]) for im in _images(4, channels, seed=5)])
    for op_id in range(NUM_OPS):
        for magnitude in (0.0, 9.0, -7.5):
            ops = [[op_id, op_id]] * len(images)
            mags = [[magnitude, 4.0]] * len(images)
            batched = apply_randaug_batch(images, ops, mags, fill=128)
            for i in range(len(images)):
                alone = apply_randaug(images[i], ops[i], mags[i], fill=128)
                assert torch.equal(batched[i], alone), (op_id, magnitude, i)


def test_apply_randaug_batch_leaves_its_input_alone_and_rejects_unknown_ops() -> None:
    images = torch.stack([F.resize(im, [8, 8]) for im in _images(3, 3, seed=1)])
    before = images.clone()
    apply_randaug_batch(images, [[1], [2], [-1]], [[0.0], [0.0], [0.0]], fill=0)
    assert torch.equal(images, before)
    with pytest.raises(ValueError, match="unknown RandAugment op id"):
        apply_randaug_batch(images, [[NUM_OPS], [0], [0]], [[0.0]] * 3, fill=0)


def test_render_block_digests_do_not_depend_on_the_rows_rendered_with() -> None:
    cfg = deit(16)
    images = _images(12, 3, seed=9)
    keys = [f"k{i}" for i in range(12)]
    hws = [(int(im.shape[1]), int(im.shape[2])) for im in images]
    cfg_unmixed = AugmentConfig(**{**cfg.to_dict(), "mix_prob": 0.0})
    block = sample_block_params(5, 0, keys, list(range(12)), hws, 12, cfg_unmixed)
    whole = view_digests(render_block(images, block, list(range(12)), cfg_unmixed))
    for i in range(12):
        one = {name: value[i : i + 1] for name, value in block.items()}
        assert view_digests(render_block([images[i]], one, [i], cfg_unmixed))[0] == whole[i]


@pytest.mark.parametrize("channels", [1, 3])
def test_equal_crop_sizes_resampled_as_one_stack_equal_per_sample(channels: int) -> None:
    # Digits-like: every source 8×8, so many views share a crop size and are resized together.
    cfg = small(16)
    gen = torch.Generator().manual_seed(channels)
    images = list(torch.randint(0, 256, (32, channels, 8, 8), generator=gen, dtype=torch.uint8))
    keys = [f"d{i}" for i in range(32)]
    block = sample_block_params(2, 0, keys, list(range(32)), [(8, 8)] * 32, 32, cfg)
    sizes = {tuple(box[2:]) for box in block["crop"].tolist()}
    assert len(sizes) < 32  # the grouping is exercised
    expected = torch.stack(
        [_per_sample_view(images[i], param_row(block, i), cfg) for i in range(32)]
    )
    assert torch.equal(render_unmixed(images, block, cfg), expected)
