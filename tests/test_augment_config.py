"""AugmentConfig: validation, JSON round trip, presets."""

from __future__ import annotations

import json

import pytest

from civt_pipe.pipeline.augment.config import (
    PRESETS,
    AugmentConfig,
    crop_flip,
    deit,
    preset,
    small,
)
from civt_pipe.pipeline.runtime.errors import UserError


def test_deit_preset_matches_the_paper_recipe() -> None:
    cfg = deit(224)
    assert cfg.scale == (0.08, 1.0)
    assert cfg.ratio == pytest.approx((3 / 4, 4 / 3))
    assert cfg.hflip == 0.5
    assert (cfg.randaug_ops, cfg.randaug_magnitude, cfg.randaug_mstd) == (2, 9.0, 0.5)
    assert cfg.erase_prob == 0.25
    assert (cfg.mixup_alpha, cfg.cutmix_alpha, cfg.mix_prob, cfg.switch_prob) == (
        0.8,
        1.0,
        1.0,
        0.5,
    )
    assert cfg.mix_block == 64


def test_crop_flip_preset_only_crops_and_flips() -> None:
    cfg = crop_flip(32)
    assert cfg.randaug_ops == 0 and cfg.erase_prob == 0 and not cfg.mixing
    assert cfg.hflip == 0.5


def test_small_preset_is_gentler_than_deit() -> None:
    gentle, strong = small(16), deit(16)
    assert gentle.scale[0] > strong.scale[0]
    assert gentle.hflip == 0
    assert gentle.randaug_ops < strong.randaug_ops
    assert gentle.randaug_magnitude < strong.randaug_magnitude
    assert gentle.mix_prob < strong.mix_prob


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_survives_a_json_round_trip(name: str) -> None:
    cfg = preset(name, 24)
    again = AugmentConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert isinstance(again.scale, tuple)


def test_from_dict_rejects_unknown_fields() -> None:
    data = deit(32).to_dict() | {"color_jitter": 0.4}
    with pytest.raises(UserError, match="color_jitter"):
        AugmentConfig.from_dict(data)


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(UserError, match="deit"):
        preset("autoaugment", 32)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        # The size is the one field a user sets directly: its message names the option.
        ({"image_size": 2}, "--image-size"),
        ({"scale": (0.5, 0.2)}, "scale"),
        ({"scale": (0.0, 1.0)}, "scale"),
        ({"scale": 0.5}, "scale"),
        ({"ratio": (0.0, 1.0)}, "ratio"),
        ({"hflip": 1.5}, "hflip"),
        ({"erase_prob": -0.1}, "erase_prob"),
        ({"randaug_ops": -1}, "randaug_ops"),
        ({"randaug_magnitude": 11.0}, "randaug_magnitude"),
        ({"randaug_mstd": -1.0}, "randaug_mstd"),
        ({"ra_fill": 300}, "ra_fill"),
        ({"mixup_alpha": -0.5}, "mixup_alpha"),
        ({"mixup_alpha": 0.0, "cutmix_alpha": 0.0}, "mix_prob"),
        ({"mix_block": 0}, "mix_block"),
        ({"interpolation": "nearest"}, "interpolation"),
    ],
)
def test_invalid_values_raise_a_user_error_naming_the_field(
    change: dict[str, object], field: str
) -> None:
    args: dict[str, object] = {"image_size": 32} | change
    with pytest.raises(UserError, match=field):
        AugmentConfig(**args)  # type: ignore[arg-type]


def test_config_is_frozen() -> None:
    cfg = deit(32)
    with pytest.raises(AttributeError):
        cfg.image_size = 64  # type: ignore[misc]


def test_mix_block_of_one_disables_mixing() -> None:
    assert deit(32).mixing
    assert not AugmentConfig(image_size=32, mix_block=1).mixing
