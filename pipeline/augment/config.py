"""`AugmentConfig`: the training augmentation recipe, plus the presets we ship.

The config is stored in every logit store and checkpoint (`to_dict`), so a later stage can
rebuild it (`from_dict`) and check that it replays the views it was trained against.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ..runtime.errors import UserError

Interpolation = Literal["bilinear", "bicubic"]


@dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    """One augmentation recipe: crop, flip, RandAugment, random erasing, mixup/cutmix.

    Every probability is in [0, 1]; setting it to 0 turns that step off.
    """

    image_size: int
    """Side of the square output view in pixels."""
    scale: tuple[float, float] = (0.08, 1.0)
    """RandomResizedCrop: range of the crop's area as a fraction of the source image."""
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    """RandomResizedCrop: range of the crop's aspect ratio (width / height), log-uniform."""
    interpolation: Interpolation = "bilinear"
    """Resampling for the crop and the geometric RandAugment ops (antialiased when shrinking)."""
    hflip: float = 0.5
    """Probability of a horizontal flip (0 for data whose meaning changes when mirrored)."""
    randaug_ops: int = 2
    """RandAugment: number of ops drawn per view, with replacement (0 turns RandAugment off)."""
    randaug_magnitude: float = 9.0
    """RandAugment: magnitude m on timm's 0..10 scale."""
    randaug_mstd: float = 0.5
    """RandAugment: standard deviation of Gaussian noise on m per op (timm's `mstd`)."""
    randaug_prob: float = 0.5
    """RandAugment: probability that each drawn op is applied (timm's default is 0.5)."""
    ra_fill: int = 128
    """Pixel value (0..255, all channels) for areas that rotate/shear/translate uncover."""
    erase_prob: float = 0.25
    """Probability of random erasing (one box filled with uniform noise in [0, 1])."""
    mixup_alpha: float = 0.8
    """Mixup: λ ~ Beta(α, α); 0 disables mixup."""
    cutmix_alpha: float = 1.0
    """CutMix: λ ~ Beta(α, α) sets the box size; 0 disables cutmix."""
    mix_prob: float = 1.0
    """Probability that a view is mixed with a partner at all."""
    switch_prob: float = 0.5
    """Probability of cutmix rather than mixup when both are enabled."""
    mix_block: int = 64
    """Partners come from the same block of this many consecutive positions of a shard."""

    def __post_init__(self) -> None:
        # Stored configs come back from JSON as lists; normalize so equality and hashing work.
        object.__setattr__(self, "scale", _pair("scale", self.scale))
        object.__setattr__(self, "ratio", _pair("ratio", self.ratio))
        if not isinstance(self.image_size, int) or self.image_size < 4:
            raise UserError(
                f"augment image_size must be an integer of at least 4, got {self.image_size!r}"
            )
        lo, hi = self.scale
        if not 0.0 < lo <= hi <= 1.0:
            raise UserError(f"augment scale must satisfy 0 < min <= max <= 1, got {self.scale}")
        lo, hi = self.ratio
        if not (0.0 < lo <= hi and math.isfinite(hi)):
            raise UserError(f"augment ratio must satisfy 0 < min <= max, got {self.ratio}")
        if self.interpolation not in ("bilinear", "bicubic"):
            raise UserError(
                f"augment interpolation must be 'bilinear' or 'bicubic', got {self.interpolation!r}"
            )
        for name in ("hflip", "randaug_prob", "erase_prob", "mix_prob", "switch_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise UserError(f"augment {name} is a probability in [0, 1], got {value!r}")
        if not isinstance(self.randaug_ops, int) or not 0 <= self.randaug_ops <= 16:
            raise UserError(
                f"augment randaug_ops must be an integer in 0..16, got {self.randaug_ops!r}"
            )
        if not 0.0 <= self.randaug_magnitude <= 10.0:
            raise UserError(
                f"augment randaug_magnitude is on the 0..10 scale, got {self.randaug_magnitude!r}"
            )
        if not (self.randaug_mstd >= 0.0 and math.isfinite(self.randaug_mstd)):
            raise UserError(f"augment randaug_mstd must be >= 0, got {self.randaug_mstd!r}")
        if not isinstance(self.ra_fill, int) or not 0 <= self.ra_fill <= 255:
            raise UserError(f"augment ra_fill must be an integer in 0..255, got {self.ra_fill!r}")
        for name in ("mixup_alpha", "cutmix_alpha"):
            value = getattr(self, name)
            if not (value >= 0.0 and math.isfinite(value)):
                raise UserError(f"augment {name} must be >= 0, got {value!r}")
        if self.mix_prob > 0 and self.mixup_alpha == 0 and self.cutmix_alpha == 0:
            raise UserError(
                "augment mix_prob > 0 needs mixup_alpha or cutmix_alpha > 0 (or set mix_prob 0)"
            )
        if not isinstance(self.mix_block, int) or self.mix_block < 1:
            raise UserError(f"augment mix_block must be an integer >= 1, got {self.mix_block!r}")

    @property
    def mixing(self) -> bool:
        """Whether any view can be mixed with a partner."""
        return self.mix_prob > 0 and self.mix_block > 1

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (tuples become lists) that `from_dict` turns back into this config."""
        out = dataclasses.asdict(self)
        out["scale"] = list(self.scale)
        out["ratio"] = list(self.ratio)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AugmentConfig:
        """Rebuild a config stored with `to_dict`; unknown fields are an error, not ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(
                f"augment config has unknown field(s) {', '.join(unknown)} "
                "(written by a newer civt-pipe?)"
            )
        return cls(**data)


def _pair(name: str, value: Any) -> tuple[float, float]:
    try:
        lo, hi = value
        return (float(lo), float(hi))
    except (TypeError, ValueError):
        raise UserError(f"augment {name} must be a pair (min, max), got {value!r}") from None


def deit(image_size: int) -> AugmentConfig:
    """The DeiT / Co-advise recipe: timm `rand-m9-mstd0.5-inc1`, reprob .25, mixup .8, cutmix 1."""
    return AugmentConfig(image_size=image_size, interpolation="bicubic")


def crop_flip(image_size: int) -> AugmentConfig:
    """Crop and flip only: the plain recipe for training the teachers themselves."""
    return AugmentConfig(
        image_size=image_size,
        randaug_ops=0,
        erase_prob=0.0,
        mixup_alpha=0.0,
        cutmix_alpha=0.0,
        mix_prob=0.0,
    )


def crop_flip_defaults(image_size: int, native_size: int) -> tuple[float, float]:
    """The smallest crop area and the flip probability :func:`crop_flip` views default to.

    Crops keep at least 35 % of the area at ≤ 64 px (8 % is the ImageNet rule, too little of a
    tiny image); sources under 16 px (digits are 8 px) are glyphs, where a mirrored 2 is no
    longer a 2, so they are not flipped.
    """
    return (0.35 if image_size <= 64 else 0.08), (0.0 if native_size < 16 else 0.5)


def small(image_size: int) -> AugmentConfig:
    """A gentler recipe for tiny images (8×8 digits upscaled to 16, CIFAR-sized data).

    At 16 px the DeiT recipe destroys most samples: a crop of 8 % of an 8×8 digit is under three
    source pixels, a flip turns digits into other shapes, and two RandAugment ops at m=9 shift by
    up to 45 % of the image. So: crops keep at least 35 % of the area, no flip, one op at m=5,
    fill 0 (the digits' background), rarer erasing, and mixing on half of the views with
    milder λ.
    """
    return AugmentConfig(
        image_size=image_size,
        scale=(0.35, 1.0),
        hflip=0.0,
        randaug_ops=1,
        randaug_magnitude=5.0,
        randaug_mstd=0.5,
        ra_fill=0,
        erase_prob=0.1,
        mixup_alpha=0.2,
        cutmix_alpha=1.0,
        mix_prob=0.5,
        switch_prob=0.5,
    )


PRESETS: dict[str, Callable[[int], AugmentConfig]] = {
    "deit": deit,
    "crop-flip": crop_flip,
    "small": small,
}


PRESET_CHOICES: tuple[str, ...] = ("auto", *PRESETS)
"""What an ``--aug`` option accepts: a preset's name, or ``auto`` (see :func:`preset`)."""


def preset(name: str, image_size: int) -> AugmentConfig:
    """The preset called `name` ("deit", "crop-flip", "small") at `image_size`.

    ``auto`` picks ``small`` for views of at most 32 px (the DeiT recipe wipes out most of a
    tiny image: 8 % crops, flips of digits, strong RandAugment) and ``deit`` above.
    """
    if name == "auto":
        name = "small" if image_size <= 32 else "deit"
    try:
        factory = PRESETS[name]
    except KeyError:
        raise UserError(
            f"unknown augmentation preset {name!r}; known: {', '.join(PRESETS)}"
        ) from None
    return factory(image_size)


RENDER_DEVICE_CHOICES = ("auto", "cpu", "cuda")
"""``--render-device`` values (resolved by :func:`.render_device.resolve_render_device`)."""
LEGACY_RENDER_DEVICE = "cpu"
"""Where a store that records no ``render_device`` was rendered (every store before the option)."""
RENDER_DEVICE_HELP = (
    "Where views are rendered: auto (a store's recorded device; else the model's device with "
    "--workers 0, the CPU with worker processes), cpu, or cuda (--workers 0)."
)
