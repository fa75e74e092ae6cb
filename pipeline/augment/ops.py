"""Our RandAugment op table: op ids, magnitude → argument mapping, application.

The ids are part of the store format (`ra_ops`), so they never change meaning; new ops get new
ids. The set is timm's `rand` policy with its `inc1` ("increasing") magnitudes — a larger
magnitude is always a stronger change — minus Invert and SolarizeAdd, plus Identity
(as in torchvision's RandAugment). Magnitudes are on timm's 0..10 scale; the sign stored with
each magnitude picks the direction of the signed ops (rotate left or right, brighter or darker).

Everything runs on uint8 tensors `[C, H, W]` with C = 1 or 3 through
`torchvision.transforms.v2.functional`; only the numbers below are ours, so a torchvision
upgrade cannot silently change what a stored op id and magnitude mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as F
from torchvision.transforms import InterpolationMode

MAX_LEVEL = 10.0
"""Top of the magnitude scale (timm's `_LEVEL_DENOM`)."""

_ROTATE_MAX_DEG = 30.0
_SHEAR_MAX = 0.3  # shear factor (tan of the angle) at level 10
_TRANSLATE_MAX_FRAC = 0.45  # timm's translate_pct, relative to the image side
_ENHANCE_MAX = 0.9  # enhance factor = 1 ± 0.9 at level 10
_ENHANCE_MIN_FACTOR = 0.1

# The geometric ops always resample bilinearly: bicubic on uint8 rings and grid_sample's
# bicubic is not what PIL does anyway, so bilinear is the stable choice.
_GEOMETRIC_INTERPOLATION = InterpolationMode.BILINEAR

OpFn = Callable[[torch.Tensor, float, int], torch.Tensor]
"""(uint8 image, signed magnitude, fill) -> uint8 image of the same shape."""


@dataclass(frozen=True)
class RandAugmentOp:
    """One entry of the op table."""

    op_id: int
    name: str
    signed: bool
    """Whether the magnitude's sign matters (sampled as a random ±); unsigned ops store |m|."""
    fn: OpFn


def _level(magnitude: float) -> float:
    """Clamp a signed magnitude to [-10, 10] and scale it to [-1, 1]."""
    return max(-MAX_LEVEL, min(MAX_LEVEL, magnitude)) / MAX_LEVEL


def enhance_factor(magnitude: float) -> float:
    """Color/Contrast/Brightness/Sharpness factor: 1 + 0.9·m/10, at least 0.1."""
    return max(_ENHANCE_MIN_FACTOR, 1.0 + _ENHANCE_MAX * _level(magnitude))


def rotate_degrees(magnitude: float) -> float:
    """Rotation angle in degrees: 30·m/10 (sign = direction)."""
    return _ROTATE_MAX_DEG * _level(magnitude)


def shear_degrees(magnitude: float) -> float:
    """Shear angle in degrees for a shear factor of 0.3·m/10."""
    return math.degrees(math.atan(_SHEAR_MAX * _level(magnitude)))


def translate_pixels(magnitude: float, side: int) -> int:
    """Translation in whole pixels: 0.45·m/10 of the image side, rounded."""
    return round(_TRANSLATE_MAX_FRAC * _level(magnitude) * side)


def solarize_threshold(magnitude: float) -> int:
    """Solarize threshold: 256 − ⌊25.6·|m|⌋ (256 = no pixel inverted, 0 = all inverted)."""
    return 256 - int(abs(_level(magnitude)) * 256)


def posterize_bits(magnitude: float) -> int:
    """Bits kept by Posterize: 4 − ⌊0.4·|m|⌋, at least 1 (timm keeps 0 bits at m = 10,
    which turns the image black; we stop at 1)."""
    return max(1, 4 - int(abs(_level(magnitude)) * 4))


def _fill(image: torch.Tensor, fill: int) -> list[float]:
    return [float(fill)] * image.shape[-3]


def _identity(image: torch.Tensor, magnitude: float, fill: int) -> torch.Tensor:
    return image


def _autocontrast(image: torch.Tensor, magnitude: float, fill: int) -> torch.Tensor:
    return F.autocontrast(image)


def _equalize(image: torch.Tensor, magnitude: float, fill: int) -> torch.Tensor:
    return F.equalize(image)


def _rotate(image: torch.Tensor, magnitude: float, fill: int) -> torch.Tensor:
    return F.rotate(
        image,
        rotate_degrees(magnitude),
        interpolation=_GEOMETRIC_INTERPOLATION,
        fill=_fill(image, fill),
    )


def _solarize(image: torch.Tensor, magnitude: float, fill: int) -> torch.Tensor:
    threshold = solarize_threshold(magnitude)
    if threshold > 255:  # nothing is >= 256 in uint8; torchvision rejects the threshold
        return image
    return F.solarize(image, threshold)


def _color(image: torch.Tensor, magnitude: float, fill: int) -> torch.Tensor:
    # On one channel saturation has nothing to act on; torchvision returns the image as is.
    return F.adjust_saturation(image, enhance_factor(magnitude))


def _posterize(image: torch.Tensor, magnitude: float, fill: int) -> torch.Tensor:
    return F.posterize(image, posterize_bits(magnitude))


def _contrast(image: torch.Tensor, magnitude: float, fill: int) -> torch.Tensor:
    return F.adjust_contrast(image, enhance_factor(magnitude))


def _brightness(image: torch.Tensor, magnitude: float, fill: int) -> torch.Tensor:
    return F.adjust_brightness(image, enhance_factor(magnitude))


def _sharpness(image: torch.Tensor, magnitude: float, fill: int) -> torch.Tensor:
    return F.adjust_sharpness(image, enhance_factor(magnitude))


def _affine(
    image: torch.Tensor, fill: int, *, shear: tuple[float, float], translate: tuple[int, int]
) -> torch.Tensor:
    return F.affine(
        image,
        angle=0.0,
        translate=[float(translate[0]), float(translate[1])],
        scale=1.0,
        shear=[shear[0], shear[1]],
        interpolation=_GEOMETRIC_INTERPOLATION,
        fill=_fill(image, fill),
        center=[0.0, 0.0],  # shear about the top-left corner, like PIL's affine transform
    )


def _shear_x(image: torch.Tensor, magnitude: float, fill: int) -> torch.Tensor:
    return _affine(image, fill, shear=(shear_degrees(magnitude), 0.0), translate=(0, 0))


def _shear_y(image: torch.Tensor, magnitude: float, fill: int) -> torch.Tensor:
    return _affine(image, fill, shear=(0.0, shear_degrees(magnitude)), translate=(0, 0))


def _translate_x(image: torch.Tensor, magnitude: float, fill: int) -> torch.Tensor:
    dx = translate_pixels(magnitude, image.shape[-1])
    return _affine(image, fill, shear=(0.0, 0.0), translate=(dx, 0))


def _translate_y(image: torch.Tensor, magnitude: float, fill: int) -> torch.Tensor:
    dy = translate_pixels(magnitude, image.shape[-2])
    return _affine(image, fill, shear=(0.0, 0.0), translate=(0, dy))


OPS: tuple[RandAugmentOp, ...] = (
    RandAugmentOp(0, "Identity", False, _identity),
    RandAugmentOp(1, "AutoContrast", False, _autocontrast),
    RandAugmentOp(2, "Equalize", False, _equalize),
    RandAugmentOp(3, "Rotate", True, _rotate),
    RandAugmentOp(4, "Solarize", False, _solarize),
    RandAugmentOp(5, "Color", True, _color),
    RandAugmentOp(6, "Posterize", False, _posterize),
    RandAugmentOp(7, "Contrast", True, _contrast),
    RandAugmentOp(8, "Brightness", True, _brightness),
    RandAugmentOp(9, "Sharpness", True, _sharpness),
    RandAugmentOp(10, "ShearX", True, _shear_x),
    RandAugmentOp(11, "ShearY", True, _shear_y),
    RandAugmentOp(12, "TranslateX", True, _translate_x),
    RandAugmentOp(13, "TranslateY", True, _translate_y),
)
"""The op table, indexed by op id."""

NUM_OPS = len(OPS)
NO_OP = -1
"""`ra_ops` value of a slot whose op was not applied (or does not exist)."""

OP_NAMES: dict[int, str] = {op.op_id: op.name for op in OPS}


def apply_op(image: torch.Tensor, op_id: int, magnitude: float, *, fill: int) -> torch.Tensor:
    """Apply op `op_id` at signed `magnitude` to a uint8 `[C, H, W]` image (C = 1 or 3).

    `op_id == NO_OP` returns the image unchanged.
    """
    if op_id == NO_OP:
        return image
    if not 0 <= op_id < NUM_OPS:
        raise ValueError(f"unknown RandAugment op id {op_id} (valid: -1..{NUM_OPS - 1})")
    return OPS[op_id].fn(image, float(magnitude), fill)


def apply_randaug(
    image: torch.Tensor, op_ids: list[int], magnitudes: list[float], *, fill: int
) -> torch.Tensor:
    """Apply the ops of one view in order (the stored `ra_ops`/`ra_mag` rows)."""
    for op_id, magnitude in zip(op_ids, magnitudes, strict=True):
        image = apply_op(image, op_id, magnitude, fill=fill)
    return image


def _batch_argument(op_id: int, magnitude: float) -> int | None:
    """The whole-batch argument of an op that can run on a stack of views at once, else None.

    AutoContrast and Equalize ignore the magnitude; Solarize and Posterize only see
    the integer it maps to. Their torchvision kernels act on each image of a `[B, C, H, W]`
    stack independently with integer (or per-image elementwise) arithmetic, so a group of views
    that share the argument gets the bits each would get alone.
    """
    name = OPS[op_id].name
    if name in ("AutoContrast", "Equalize"):
        return 0
    if name == "Solarize":
        return solarize_threshold(magnitude)
    if name == "Posterize":
        return posterize_bits(magnitude)
    return None


def apply_randaug_batch(
    images: torch.Tensor, op_ids: list[list[int]], magnitudes: list[list[float]], *, fill: int
) -> torch.Tensor:
    """`apply_randaug` on every view of a uint8 stack `[n, C, H, W]`, bit-identical per view.

    `op_ids[i]` and `magnitudes[i]` are view i's stored `ra_ops`/`ra_mag` rows. Slot by slot,
    the views that run the same magnitude-free or integer-argument op are processed as one
    stack; every other op runs view by view, and Identity, like `NO_OP`, not at all. Returns a
    new tensor; `images` is not modified.
    """
    out = images.clone()
    slots = len(op_ids[0]) if op_ids else 0
    for slot in range(slots):
        groups: dict[tuple[int, int], list[int]] = {}
        for i in range(len(op_ids)):
            op_id, magnitude = op_ids[i][slot], magnitudes[i][slot]
            if op_id == NO_OP:
                continue
            if not 0 <= op_id < NUM_OPS:
                raise ValueError(f"unknown RandAugment op id {op_id} (valid: -1..{NUM_OPS - 1})")
            if OPS[op_id].fn is _identity:
                continue
            argument = _batch_argument(op_id, magnitude)
            if argument is None:
                out[i] = apply_op(out[i], op_id, magnitude, fill=fill)
            else:
                groups.setdefault((op_id, argument), []).append(i)
        for (op_id, _), rows in groups.items():
            index = torch.tensor(rows)
            # The op's argument is the same for every row of the group: the first one's
            # magnitude stands for all of them.
            out[index] = OPS[op_id].fn(out[index], float(magnitudes[rows[0]][slot]), fill)
    return out
