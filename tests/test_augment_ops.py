"""The RandAugment op table: ids, magnitude mapping, application to 1- and 3-channel uint8."""

from __future__ import annotations

import pytest
import torch

from civt_pipe.pipeline.augment.ops import (
    NO_OP,
    NUM_OPS,
    OP_NAMES,
    OPS,
    apply_op,
    apply_randaug,
    enhance_factor,
    posterize_bits,
    rotate_degrees,
    solarize_threshold,
    translate_pixels,
)


def _image(channels: int, height: int = 32, width: int = 30) -> torch.Tensor:
    # Over 255 pixels: below that, Equalize (like PIL's) leaves images unchanged.
    gen = torch.Generator().manual_seed(channels * 100 + height)
    image = torch.randint(90, 140, (channels, height, width), generator=gen, dtype=torch.uint8)
    image[:, : height // 2, : width // 2] = 250  # structure, so geometric ops move something
    return image


def test_op_ids_are_stable() -> None:
    # Stored `ra_ops` refer to these ids forever; reordering the table would corrupt stores.
    assert OP_NAMES == {
        0: "Identity",
        1: "AutoContrast",
        2: "Equalize",
        3: "Rotate",
        4: "Solarize",
        5: "Color",
        6: "Posterize",
        7: "Contrast",
        8: "Brightness",
        9: "Sharpness",
        10: "ShearX",
        11: "ShearY",
        12: "TranslateX",
        13: "TranslateY",
    }
    assert all(op.op_id == i for i, op in enumerate(OPS))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("op_id", range(NUM_OPS))
@pytest.mark.parametrize("magnitude", [0.0, 4.5, -9.0, 10.0])
def test_every_op_keeps_shape_and_dtype(op_id: int, channels: int, magnitude: float) -> None:
    image = _image(channels)
    out = apply_op(image, op_id, magnitude, fill=128)
    assert out.shape == image.shape
    assert out.dtype == torch.uint8


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(
    "name",
    [
        "Rotate",
        "Solarize",
        "Posterize",
        "Contrast",
        "Brightness",
        "Sharpness",
        "ShearX",
        "ShearY",
        "TranslateX",
        "TranslateY",
        "AutoContrast",
        "Equalize",
    ],
)
def test_strong_ops_change_the_image(name: str, channels: int) -> None:
    op_id = next(op.op_id for op in OPS if op.name == name)
    image = _image(channels)
    assert not torch.equal(apply_op(image, op_id, 9.0, fill=0), image)


def test_color_changes_rgb_and_leaves_grayscale_alone() -> None:
    color = next(op.op_id for op in OPS if op.name == "Color")
    assert not torch.equal(apply_op(_image(3), color, 9.0, fill=0), _image(3))
    assert torch.equal(apply_op(_image(1), color, 9.0, fill=0), _image(1))


def test_identity_and_no_op_return_the_input() -> None:
    image = _image(3)
    assert torch.equal(apply_op(image, 0, 9.0, fill=0), image)
    assert torch.equal(apply_op(image, NO_OP, 9.0, fill=0), image)


def test_unknown_op_id_is_rejected() -> None:
    with pytest.raises(ValueError, match="op id"):
        apply_op(_image(1), NUM_OPS, 1.0, fill=0)


def test_magnitude_zero_is_the_identity_for_signed_ops() -> None:
    image = _image(3)
    for op in OPS:
        if op.signed:
            assert torch.equal(apply_op(image, op.op_id, 0.0, fill=0), image), op.name


def test_magnitude_mapping_follows_timm_increasing_scale() -> None:
    assert rotate_degrees(10) == pytest.approx(30.0)
    assert rotate_degrees(-5) == pytest.approx(-15.0)
    assert enhance_factor(9) == pytest.approx(1.81)
    assert enhance_factor(-10) == pytest.approx(0.1)
    assert translate_pixels(10, 20) == 9
    assert solarize_threshold(0) == 256 and solarize_threshold(10) == 0
    assert posterize_bits(0) == 4 and posterize_bits(9) == 1 and posterize_bits(10) == 1
    # Out-of-range magnitudes are clamped, never extrapolated.
    assert rotate_degrees(25) == pytest.approx(30.0)


def test_solarize_at_zero_magnitude_leaves_white_pixels_alone() -> None:
    solarize = next(op.op_id for op in OPS if op.name == "Solarize")
    white = torch.full((1, 4, 4), 255, dtype=torch.uint8)
    assert torch.equal(apply_op(white, solarize, 0.0, fill=0), white)
    assert torch.equal(apply_op(white, solarize, 10.0, fill=0), torch.zeros_like(white))


def test_rotate_fills_uncovered_corners_with_the_fill_value() -> None:
    rotate = next(op.op_id for op in OPS if op.name == "Rotate")
    image = torch.full((3, 16, 16), 200, dtype=torch.uint8)
    out = apply_op(image, rotate, 10.0, fill=7)
    assert out[:, 0, 0].tolist() == [7, 7, 7]


def test_apply_randaug_applies_ops_in_order() -> None:
    image = _image(3)
    rotate, solarize = 3, 4
    expected = apply_op(apply_op(image, rotate, 6.0, fill=0), solarize, 5.0, fill=0)
    out = apply_randaug(image, [rotate, NO_OP, solarize], [6.0, 0.0, 5.0], fill=0)
    assert torch.equal(out, expected)
