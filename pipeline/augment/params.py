"""Per-view augmentation parameters: sampled from the keyed RNG, stored as plain arrays.

A view's parameters are a pure function of (seed, view, key, position in its shard, source
image size, shard sample count, config). They are stored field by field (`aug/<field>` in the
logit store), and rendering needs nothing else — no RNG, no config beyond the output size and
fill, see `render.py`.

Fields (per view; the store adds leading [N, V] axes):

| field | shape | dtype | meaning |
|---|---|---|---|
| crop | [4] | int32 | top, left, height, width of the crop in source pixels |
| flip | [] | uint8 | 1 = horizontal flip after the crop |
| ra_ops | [n] | int16 | RandAugment op ids in order, −1 = slot not applied |
| ra_mag | [n] | float32 | signed magnitude per slot (0..10 scale, noise included) |
| erase | [4] | int32 | top, left, height, width in output pixels; height 0 = no erasing |
| erase_seed | [] | int64 | seed of the erasing noise |
| mix_mode | [] | uint8 | 0 none, 1 mixup, 2 cutmix |
| mix_lam | [] | float32 | weight of the sample's own image and label (1 when not mixed) |
| mix_box | [4] | int32 | cutmix box (top, left, height, width) in output pixels, else 0 |
| mix_partner | [] | int32 | partner's position in the same shard, −1 = none |

n = max(1, cfg.randaug_ops) so no stored array has a zero-length axis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from .config import AugmentConfig
from .ops import NO_OP, NUM_OPS, OPS
from .rng import UniformStream, view_stream

MIX_NONE, MIX_MIXUP, MIX_CUTMIX = 0, 1, 2

_CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop
_ERASE_ATTEMPTS = 10  # timm's RandomErasing
_ERASE_AREA = (0.02, 1 / 3)  # fraction of the output area (timm defaults)
_ERASE_LOG_ASPECT = (math.log(0.3), math.log(1 / 0.3))
_SEED_SCALE = float(1 << 53)  # erase_seed takes all 53 bits of one float64 uniform

ParamBlock = dict[str, np.ndarray]
"""Field name -> array with a leading axis of one entry per view."""


def param_fields(cfg: AugmentConfig) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Each field's per-view trailing shape and dtype (the store's `aug/<field>` layout)."""
    n = max(1, cfg.randaug_ops)
    return {
        "crop": ((4,), np.dtype(np.int32)),
        "flip": ((), np.dtype(np.uint8)),
        "ra_ops": ((n,), np.dtype(np.int16)),
        "ra_mag": ((n,), np.dtype(np.float32)),
        "erase": ((4,), np.dtype(np.int32)),
        "erase_seed": ((), np.dtype(np.int64)),
        "mix_mode": ((), np.dtype(np.uint8)),
        "mix_lam": ((), np.dtype(np.float32)),
        "mix_box": ((4,), np.dtype(np.int32)),
        "mix_partner": ((), np.dtype(np.int32)),
    }


def empty_params(cfg: AugmentConfig, n: int) -> ParamBlock:
    """A block of n views with no augmentation: full crop unset (zeros), no ops, no mixing."""
    out = {
        name: np.zeros((n, *shape), dtype=dtype)
        for name, (shape, dtype) in param_fields(cfg).items()
    }
    out["ra_ops"][...] = NO_OP
    out["mix_lam"][...] = 1.0
    out["mix_partner"][...] = -1
    return out


def mix_block_range(position: int, shard_count: int, mix_block: int) -> tuple[int, int]:
    """[start, end) of the block of consecutive positions that `position` mixes within."""
    if not 0 <= position < shard_count:
        raise ValueError(f"position {position} is outside a shard of {shard_count} samples")
    start = (position // mix_block) * mix_block
    return start, min(start + mix_block, shard_count)


def sample_block_params(
    seed: int,
    view: int,
    keys: Sequence[str],
    positions: Sequence[int],
    src_hws: Sequence[tuple[int, int]],
    shard_count: int,
    cfg: AugmentConfig,
) -> ParamBlock:
    """Sample view `view` of every sample given, one row per sample (leading axis n).

    `keys[i]` sits at `positions[i]` of a shard of `shard_count` samples and its decoded image
    is `src_hws[i]` = (height, width) pixels. Each row depends only on its own
    (seed, view, key, position, size) — rows can be sampled in any grouping or process.
    """
    n = len(keys)
    if len(positions) != n or len(src_hws) != n:
        raise ValueError(
            f"keys, positions and src_hws must have one entry per sample, "
            f"got {n}, {len(positions)}, {len(src_hws)}"
        )
    out = empty_params(cfg, n)
    for i in range(n):
        _sample_row(out, i, seed, view, keys[i], int(positions[i]), src_hws[i], shard_count, cfg)
    return out


def sample_view_params(
    seed: int,
    view: int,
    key: str,
    position: int,
    src_hw: tuple[int, int],
    shard_count: int,
    cfg: AugmentConfig,
) -> dict[str, np.ndarray]:
    """The parameters of one view of one sample (each field without the leading axis)."""
    block = sample_block_params(seed, view, [key], [position], [src_hw], shard_count, cfg)
    return param_row(block, 0)


def param_row(block: Mapping[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    """Row i of a parameter block: each field without the leading axis."""
    return {name: np.asarray(values[i]) for name, values in block.items()}


def unmix_rows(block: Mapping[str, np.ndarray], rows: np.ndarray) -> ParamBlock:
    """A copy of `block` with mixing switched off on `rows` (bool mask or indices).

    For a stage that cannot render some partner (e.g. a sample skipped as undecodable): the
    stored parameters then say what the teachers really saw.
    """
    out = {name: np.array(values, copy=True) for name, values in block.items()}
    out["mix_mode"][rows] = MIX_NONE
    out["mix_lam"][rows] = 1.0
    out["mix_box"][rows] = 0
    out["mix_partner"][rows] = -1
    return out


def _sample_row(
    out: ParamBlock,
    i: int,
    seed: int,
    view: int,
    key: str,
    position: int,
    src_hw: tuple[int, int],
    shard_count: int,
    cfg: AugmentConfig,
) -> None:
    # The order of draws below is part of the format: changing it changes every stored view.
    height, width = int(src_hw[0]), int(src_hw[1])
    if height < 1 or width < 1:
        raise ValueError(f"sample {key!r} has an empty image ({height}x{width})")
    block_start, block_end = mix_block_range(position, shard_count, cfg.mix_block)
    rng = view_stream(seed, view, key)
    size = cfg.image_size

    out["crop"][i] = _crop_box(rng, height, width, cfg.scale, cfg.ratio)
    out["flip"][i] = rng.bernoulli(cfg.hflip)

    for slot in range(cfg.randaug_ops):
        op = OPS[rng.randint(NUM_OPS)]
        applied = rng.bernoulli(cfg.randaug_prob)
        magnitude = cfg.randaug_magnitude
        if cfg.randaug_mstd > 0:
            magnitude += cfg.randaug_mstd * rng.normal()
        magnitude = min(max(magnitude, 0.0), 10.0)
        negative = rng.bernoulli(0.5)
        if applied:
            out["ra_ops"][i, slot] = op.op_id
            out["ra_mag"][i, slot] = -magnitude if (op.signed and negative) else magnitude

    if rng.bernoulli(cfg.erase_prob):
        out["erase"][i] = _erase_box(rng, size)
    out["erase_seed"][i] = int(rng.uniform() * _SEED_SCALE)

    if cfg.mixing and block_end - block_start > 1 and rng.bernoulli(cfg.mix_prob):
        if cfg.mixup_alpha > 0 and cfg.cutmix_alpha > 0:
            cutmix = rng.bernoulli(cfg.switch_prob)
        else:
            cutmix = cfg.cutmix_alpha > 0
        lam = rng.beta(cfg.cutmix_alpha if cutmix else cfg.mixup_alpha)
        # Any other position of the block, uniformly: draw among size-1 and skip over self.
        other = rng.randint(block_end - block_start - 1)
        partner = block_start + other + (1 if block_start + other >= position else 0)
        out["mix_partner"][i] = partner
        if cutmix:
            box = _cutmix_box(rng, size, lam)
            out["mix_mode"][i] = MIX_CUTMIX
            out["mix_box"][i] = box
            lam = 1.0 - (box[2] * box[3]) / (size * size)
        else:
            out["mix_mode"][i] = MIX_MIXUP
        out["mix_lam"][i] = min(max(lam, 0.0), 1.0)


def _crop_box(
    rng: UniformStream,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box (torchvision's algorithm, our RNG)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(_CROP_ATTEMPTS):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(height - h + 1)
            left = rng.randint(width - w + 1)
            return top, left, h, w
    # Fallback: the largest central crop within the ratio range.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, max(1, min(height, round(width / ratio[0])))
    elif in_ratio > ratio[1]:
        h, w = height, max(1, min(width, round(height * ratio[1])))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def _erase_box(rng: UniformStream, size: int) -> tuple[int, int, int, int]:
    """RandomErasing's box in an output of size×size (timm's algorithm); h = 0 if none fits."""
    area = size * size
    for _ in range(_ERASE_ATTEMPTS):
        target_area = area * rng.uniform(*_ERASE_AREA)
        aspect = math.exp(rng.uniform(*_ERASE_LOG_ASPECT))
        h = round(math.sqrt(target_area * aspect))
        w = round(math.sqrt(target_area / aspect))
        if 0 < h < size and 0 < w < size:
            return rng.randint(size - h + 1), rng.randint(size - w + 1), h, w
    return 0, 0, 0, 0


def _cutmix_box(rng: UniformStream, size: int, lam: float) -> tuple[int, int, int, int]:
    """CutMix box of area ≈ (1 − λ)·size², centred uniformly and clipped to the image (timm)."""
    cut = int(size * math.sqrt(1.0 - lam))
    cy = rng.randint(size)
    cx = rng.randint(size)
    top, bottom = max(cy - cut // 2, 0), min(cy + cut // 2, size)
    left, right = max(cx - cut // 2, 0), min(cx + cut // 2, size)
    return top, left, bottom - top, right - left
