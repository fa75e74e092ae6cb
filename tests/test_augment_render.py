"""Rendering: view order and shape, erasing, mixing, targets, eval view, digests."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from civt_pipe.pipeline.augment.config import AugmentConfig, crop_flip, deit, preset, small
from civt_pipe.pipeline.augment.params import (
    MIX_CUTMIX,
    MIX_MIXUP,
    empty_params,
    sample_block_params,
)
from civt_pipe.pipeline.augment.render import (
    dominant_labels,
    lookup_partner_labels,
    mix_views,
    mixed_targets,
    render_block,
    render_unmixed,
    view_digest,
    view_digests,
)
from civt_pipe.pipeline.data.eval_view import eval_view


def _image(channels: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (channels, height, width), generator=gen, dtype=torch.uint8)


def _plain_block(cfg: AugmentConfig, height: int, width: int) -> dict[str, np.ndarray]:
    """Parameters of one view that only resizes the whole image (a block of one row)."""
    block = empty_params(cfg, 1)
    block["crop"][0] = (0, 0, height, width)
    return block


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("make_cfg", [deit, small, crop_flip])
def test_render_unmixed_gives_float_views_in_unit_range(
    channels: int, make_cfg: Callable[[int], AugmentConfig]
) -> None:
    cfg = make_cfg(16)
    image = _image(channels, 8, 11)
    block = sample_block_params(0, 0, ["a"], [0], [(8, 11)], 1, cfg)
    view = render_unmixed([image], block, cfg)[0]
    assert view.shape == (channels, 16, 16) and view.dtype == torch.float32
    assert float(view.min()) >= 0.0 and float(view.max()) <= 1.0


def test_plain_row_is_a_resize_and_flip_mirrors_it() -> None:
    cfg = crop_flip(12)
    image = _image(3, 20, 20)
    block = _plain_block(cfg, 20, 20)
    expected = F.resize(image, [12, 12], antialias=True).float() / 255
    assert torch.equal(render_unmixed([image], block, cfg)[0], expected)
    block["flip"][0] = 1
    assert torch.equal(render_unmixed([image], block, cfg)[0], expected.flip(-1))


def test_crop_box_selects_the_source_region() -> None:
    cfg = crop_flip(4)
    image = _image(1, 10, 10)
    block = _plain_block(cfg, 10, 10)
    block["crop"][0] = (2, 3, 4, 4)
    view = render_unmixed([image], block, cfg)[0]
    assert torch.equal(view, image[:, 2:6, 3:7].float() / 255)


def test_erasing_fills_its_box_with_seeded_uniform_noise() -> None:
    cfg = crop_flip(16)
    image = torch.zeros(3, 16, 16, dtype=torch.uint8)
    block = _plain_block(cfg, 16, 16)
    block["erase"][0] = (2, 5, 6, 4)
    block["erase_seed"][0] = 99
    view = render_unmixed([image], block, cfg)[0]
    noise = torch.rand((3, 6, 4), generator=torch.Generator().manual_seed(99))
    assert torch.equal(view[:, 2:8, 5:9], noise)
    view[:, 2:8, 5:9] = 0
    assert float(view.abs().sum()) == 0.0


def test_mixup_and_cutmix_arithmetic() -> None:
    own = torch.full((2, 1, 4, 4), 0.25)
    own[1] = 0.75
    block = empty_params(deit(4), 2)
    block["mix_mode"][:] = (MIX_MIXUP, MIX_CUTMIX)
    block["mix_lam"][:] = (0.75, 1 - 4 / 16)
    block["mix_box"][1] = (1, 2, 2, 2)
    out = mix_views(own, [1, 0], block)
    assert torch.equal(out[0], torch.full((1, 4, 4), 0.25 * 0.75 + 0.75 * 0.25))
    expected = torch.full((1, 4, 4), 0.75)
    expected[:, 1:3, 2:4] = 0.25
    assert torch.equal(out[1], expected)
    assert float(own[0].max()) == 0.25  # input untouched


def test_render_block_mixes_with_the_partners_unmixed_view() -> None:
    cfg = AugmentConfig(image_size=12, mix_block=3, mix_prob=1.0, switch_prob=0.0)
    keys, positions = ["a", "b", "c"], [0, 1, 2]
    images = [_image(3, 14, 15, seed=i) for i in range(3)]
    block = sample_block_params(4, 0, keys, positions, [(14, 15)] * 3, 3, cfg)
    views = render_block(images, block, positions, cfg)
    assert views.shape == (3, 3, 12, 12)
    unmixed = [
        render_unmixed([images[i]], {k: v[i : i + 1] for k, v in block.items()}, cfg)[0]
        for i in range(3)
    ]
    for i in range(3):
        partner = int(block["mix_partner"][i])
        lam = torch.tensor(block["mix_lam"][i])
        assert torch.equal(views[i], unmixed[i] * lam + unmixed[partner] * (1 - lam))


def test_render_block_rows_do_not_depend_on_what_else_is_rendered() -> None:
    cfg = AugmentConfig(image_size=10, mix_block=4, mix_prob=1.0)
    keys = [f"k{i}" for i in range(8)]
    images = [_image(1, 9, 9, seed=i) for i in range(8)]
    block = sample_block_params(0, 1, keys, range(8), [(9, 9)] * 8, 8, cfg)
    whole = render_block(images, block, list(range(8)), cfg)
    # Rows 4..7 (one mixing block) rendered on their own give the same bits.
    part = {name: values[4:] for name, values in block.items()}
    alone = render_block(images[4:], part, [4, 5, 6, 7], cfg)
    assert torch.equal(whole[4:], alone)


def test_render_block_names_a_missing_partner() -> None:
    cfg = AugmentConfig(image_size=8, mix_block=4, mix_prob=1.0)
    block = sample_block_params(0, 0, ["a"], [0], [(8, 8)], 4, cfg)
    partner = int(block["mix_partner"][0])
    with pytest.raises(ValueError, match=f"position {partner}"):
        render_block([_image(1, 8, 8)], block, [0], cfg)


def test_different_views_of_the_same_key_differ() -> None:
    cfg = small(16)
    image = _image(1, 8, 8)
    digests = set()
    for view in range(6):
        block = sample_block_params(0, view, ["k"], [0], [(8, 8)], 1, cfg)
        digests.add(view_digest(render_unmixed([image], block, cfg)[0]))
    assert len(digests) == 6


def test_mixed_targets_rows_sum_to_one_and_weigh_labels_by_lambda() -> None:
    block = empty_params(deit(8), 4)
    block["mix_partner"][:] = (1, 0, -1, 2)
    block["mix_mode"][:] = (MIX_MIXUP, MIX_CUTMIX, 0, MIX_MIXUP)
    block["mix_lam"][:] = (0.7, 0.25, 1.0, 0.6)
    labels = [3, 1, 2, 2]
    partner_labels = [1, 3, 9, 2]  # row 2's entry is ignored: it has no partner
    targets = mixed_targets(labels, partner_labels, block, num_classes=5)
    assert targets.shape == (4, 5)
    torch.testing.assert_close(targets.sum(1), torch.ones(4))
    torch.testing.assert_close(targets[0], torch.tensor([0, 0.3, 0, 0.7, 0]))
    torch.testing.assert_close(targets[1], torch.tensor([0, 0.25, 0, 0.75, 0]))
    assert targets[2].tolist() == [0, 0, 1, 0, 0]
    torch.testing.assert_close(targets[3], torch.tensor([0, 0, 1.0, 0, 0]))
    assert dominant_labels(labels, partner_labels, block).tolist() == [3, 3, 2, 2]


def test_lookup_partner_labels_maps_positions_to_labels() -> None:
    block = empty_params(deit(8), 3)
    block["mix_partner"][:] = (12, -1, 10)
    labels = lookup_partner_labels([4, 5, 6], [10, 11, 12], block)
    assert labels.tolist() == [6, -1, 4]


@pytest.mark.parametrize(
    ("source", "size"), [((8, 8), 16), ((28, 20), 32), ((300, 400), 224), ((64, 50), 48)]
)
@pytest.mark.parametrize("channels", [1, 3])
def test_eval_view_is_square_float_in_unit_range(
    source: tuple[int, int], size: int, channels: int
) -> None:
    view = eval_view(_image(channels, *source), size)
    assert view.shape == (channels, size, size) and view.dtype == torch.float32
    assert float(view.min()) >= 0.0 and float(view.max()) <= 1.0


def test_eval_view_of_tiny_images_keeps_the_whole_image() -> None:
    image = _image(1, 8, 8)
    assert torch.equal(eval_view(image, 8), image.float() / 255)
    # Larger outputs crop the center after resizing to size / 0.875.
    big = _image(3, 256, 256)
    assert torch.equal(eval_view(big, 224), F.center_crop(big, [224, 224]).float() / 255)


def test_render_rejects_non_uint8_images() -> None:
    with pytest.raises(ValueError, match="uint8"):
        eval_view(torch.zeros(3, 8, 8), 8)


def test_view_digests_match_view_digest_and_see_shape_and_bits() -> None:
    batch = torch.rand(5, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    digests = view_digests(batch)
    assert digests.dtype == np.uint64
    assert digests.tolist() == [view_digest(row) for row in batch]
    assert len(set(digests.tolist())) == 5
    flat = batch[0].reshape(3, 36)
    assert view_digest(flat) != view_digest(batch[0])  # same bytes, other shape
    nudged = batch[0].clone()
    nudged[0, 0, 0] = torch.nextafter(nudged[0, 0, 0], torch.tensor(2.0))
    assert view_digest(nudged) != view_digest(batch[0])
    # Non-contiguous input hashes its values, not its memory layout.
    assert view_digest(batch[0].transpose(1, 2).contiguous().transpose(1, 2)) == digests[0]


@settings(max_examples=60, deadline=None)
@given(
    st.integers(8, 64),
    st.integers(8, 64),
    st.integers(8, 48),
    st.sampled_from([1, 3]),
    st.sampled_from(["deit", "small", "crop-flip"]),
    st.integers(0, 2**40),
)
def test_any_sampled_view_renders_for_any_size(
    height: int, width: int, size: int, channels: int, name: str, seed: int
) -> None:
    cfg = AugmentConfig(**(preset(name, size).to_dict() | {"mix_block": 2}))
    images = [_image(channels, height, width, seed=i) for i in range(2)]
    block = sample_block_params(seed, 0, ["x", "y"], [0, 1], [(height, width)] * 2, 2, cfg)
    views = render_block(images, block, [0, 1], cfg)
    assert views.shape == (2, channels, size, size)
    assert float(views.min()) >= 0.0 and float(views.max()) <= 1.0
