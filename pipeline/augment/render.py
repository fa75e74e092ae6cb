"""Rendering views from stored parameters (no RNG), targets of mixed views, digests.

Order of one view, as in timm's DeiT pipeline: crop (resized to image_size, antialiased) →
horizontal flip → RandAugment on uint8 → float32 in [0, 1] → random erasing with uniform noise
→ mixing with the partner's *unmixed* view of the same view index (batch-level, like timm's
Mixup). Views are not normalized: each model normalizes its own input.

Determinism: every step is elementwise or a fixed resampling, so the result does not depend on
thread count, worker, rank or on which other rows are rendered alongside. The same ops run on
CUDA tensors (``device``): the images go to the device, are rendered there and stay there. GPU
resampling rounds differently from the CPU's in the last bits, so a store records where its
views were rendered and a replay renders them there again (``--render-device``); erasing's noise
is drawn on the CPU either way (same generator, same bits) and copied to the device.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torchvision.transforms.v2.functional as F

from ..data.eval_view import INTERPOLATION, check_image
from .config import AugmentConfig
from .ops import NO_OP, apply_randaug_batch
from .params import MIX_CUTMIX, MIX_MIXUP

_DIGEST_PERSON = b"civt-digest-v1"


def render_unmixed(
    images: Sequence[torch.Tensor],
    block_params: Mapping[str, np.ndarray],
    cfg: AugmentConfig,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Unmixed views `[n, C, S, S]` (float32 in [0, 1]) of n images, row i from row i of
    `block_params`; every image has the same channel count. Rendered on `device` (default: the
    first image's), where the images are moved if they are elsewhere.

    Batched where the result cannot change: the crop is resampled image by image (source
    crops differ in size, and the antialiased kernel is the one per-sample rendering used);
    from there the views are one uint8 stack — flips, the RandAugment ops that act on a group
    at once (`apply_randaug_batch`), the conversion to float — and only erasing's noise is
    drawn per view from its own seed. Each row is bit-identical to rendering it alone.
    """
    n = len(images)
    for image in images:
        check_image(image)
    where = images[0].device if device is None else device
    size = cfg.image_size
    interpolation = INTERPOLATION[cfg.interpolation]
    crops = np.asarray(block_params["crop"]).reshape(n, 4).tolist()
    # Crops of the same height and width are resampled as one stack (small sources repeat
    # sizes often); the antialiased kernel treats each image of a stack on its own.
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, (_, _, height, width) in enumerate(crops):
        by_size.setdefault((height, width), []).append(i)
    stack = torch.empty(n, images[0].shape[0], size, size, dtype=torch.uint8, device=where)
    for rows in by_size.values():
        cropped = torch.stack([F.crop_image(images[i].to(where), *crops[i]) for i in rows])
        resized = F.resize_image(cropped, [size, size], interpolation=interpolation, antialias=True)
        stack[torch.tensor(rows, device=where)] = resized
    flipped = np.flatnonzero(np.asarray(block_params["flip"]).reshape(n))
    if len(flipped):
        index = torch.as_tensor(flipped, device=where)
        stack[index] = stack[index].flip(-1)
    ops = np.asarray(block_params["ra_ops"]).reshape(n, -1)
    if (ops != NO_OP).any():
        mags = np.asarray(block_params["ra_mag"], dtype=np.float32).reshape(n, -1)
        stack = apply_randaug_batch(stack, ops.tolist(), mags.tolist(), fill=cfg.ra_fill)
    out = stack.to(torch.float32).div_(255.0)
    erase = np.asarray(block_params["erase"]).reshape(n, 4).tolist()
    seeds = np.asarray(block_params["erase_seed"]).reshape(n).tolist()
    for i, (e_top, e_left, e_height, e_width) in enumerate(erase):
        if e_height > 0 and e_width > 0:
            noise_gen = torch.Generator(device="cpu")
            noise_gen.manual_seed(int(seeds[i]))
            noise = torch.rand((out.shape[1], e_height, e_width), generator=noise_gen)
            out[i, :, e_top : e_top + e_height, e_left : e_left + e_width] = noise.to(where)
    return out


def mix_views(
    unmixed: torch.Tensor, partner_rows: Sequence[int], block_params: Mapping[str, np.ndarray]
) -> torch.Tensor:
    """Mix each unmixed view `unmixed[i]` [n, C, S, S] with `unmixed[partner_rows[i]]`.

    Mixup: `own·λ + partner·(1 − λ)` in float32; cutmix: the partner's pixels inside
    `mix_box`. Rows with `mix_mode` 0 are copied unchanged (their partner row is ignored).
    Returns a new tensor; `unmixed` is not modified.
    """
    n = unmixed.shape[0]
    modes = np.asarray(block_params["mix_mode"]).reshape(n).tolist()
    lam = torch.from_numpy(np.asarray(block_params["mix_lam"], dtype=np.float32).reshape(n))
    rest = 1.0 - lam  # float32, computed once so every caller uses the same (1 - λ) bits
    # The weights go where the views are (0-d float32: the same multiply on either device).
    lam, rest = lam.to(unmixed.device), rest.to(unmixed.device)
    boxes = np.asarray(block_params["mix_box"]).reshape(n, 4).tolist()
    out = unmixed.clone()
    # One row at a time: only mixed rows cost anything, and each row's arithmetic is the same
    # elementwise float32 multiply-then-add whatever else is in the block.
    for i, mode in enumerate(modes):
        if mode == MIX_MIXUP:
            partner = unmixed[int(partner_rows[i])]
            torch.add(unmixed[i] * lam[i], partner * rest[i], out=out[i])
        elif mode == MIX_CUTMIX:
            partner = unmixed[int(partner_rows[i])]
            top, left, height, width = boxes[i]
            rows, cols = slice(top, top + height), slice(left, left + width)
            out[i, :, rows, cols] = partner[:, rows, cols]
    return out


def render_block(
    images: Sequence[torch.Tensor],
    block_params: Mapping[str, np.ndarray],
    positions: Sequence[int],
    cfg: AugmentConfig,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Final views `[n, C, S, S]` of n samples: render each unmixed, then mix with partners,
    on `device` (default: the first image's).

    `images[i]` is the uint8 image at shard position `positions[i]`; every partner named in
    `block_params["mix_partner"]` must be one of `positions`.
    """
    n = len(images)
    if len(positions) != n:
        raise ValueError(f"got {n} images but {len(positions)} positions")
    if n == 0:
        raise ValueError("render_block needs at least one image")
    unmixed = render_unmixed(images, block_params, cfg, device)
    row_of = {int(p): i for i, p in enumerate(positions)}
    partner_rows = np.arange(n)
    for i, partner in enumerate(np.asarray(block_params["mix_partner"]).tolist()):
        if partner >= 0:
            if partner not in row_of:
                raise ValueError(
                    f"position {positions[i]} mixes with position {partner}, "
                    "which is not among the positions rendered"
                )
            partner_rows[i] = row_of[partner]
    return mix_views(unmixed, partner_rows.tolist(), block_params)


def lookup_partner_labels(
    labels: Sequence[int] | np.ndarray | torch.Tensor,
    positions: Sequence[int],
    block_params: Mapping[str, np.ndarray],
) -> torch.Tensor:
    """The partner's label per row (−1 where a row is not mixed); labels[i] is at positions[i]."""
    label_of = {
        int(p): int(lbl) for p, lbl in zip(positions, _as_long(labels).tolist(), strict=True)
    }
    partners = np.asarray(block_params["mix_partner"]).tolist()
    return torch.tensor([label_of[p] if p >= 0 else -1 for p in partners], dtype=torch.int64)


def _as_long(values: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.to(torch.int64).reshape(-1)
    return torch.as_tensor(np.asarray(values, dtype=np.int64)).reshape(-1)


def mixed_targets(
    labels: Sequence[int] | np.ndarray | torch.Tensor,
    partner_labels: Sequence[int] | np.ndarray | torch.Tensor,
    block_params: Mapping[str, np.ndarray],
    num_classes: int,
) -> torch.Tensor:
    """Soft targets `[n, num_classes]`: λ·onehot(label) + (1 − λ)·onehot(partner label).

    Rows without a partner (`mix_partner` −1) get their own one-hot whatever their
    `partner_labels` entry says.
    """
    own = _as_long(labels)
    other = _as_long(partner_labels)
    n = own.shape[0]
    lam = torch.from_numpy(np.asarray(block_params["mix_lam"], dtype=np.float32)).reshape(n)
    has_partner = torch.from_numpy(np.asarray(block_params["mix_partner"]).reshape(n) >= 0)
    lam = torch.where(has_partner, lam, torch.ones_like(lam))
    other = torch.where(has_partner, other, own)
    targets = torch.zeros(n, num_classes, dtype=torch.float32)
    targets.scatter_add_(1, own.view(n, 1), lam.view(n, 1))
    targets.scatter_add_(1, other.view(n, 1), (1.0 - lam).view(n, 1))
    return targets


def dominant_labels(
    labels: Sequence[int] | np.ndarray | torch.Tensor,
    partner_labels: Sequence[int] | np.ndarray | torch.Tensor,
    block_params: Mapping[str, np.ndarray],
) -> torch.Tensor:
    """Each view's top-1 target: the label whose weight is ≥ 0.5 (own label on a tie)."""
    own = _as_long(labels)
    other = _as_long(partner_labels)
    n = own.shape[0]
    lam = torch.from_numpy(np.asarray(block_params["mix_lam"], dtype=np.float32)).reshape(n)
    has_partner = torch.from_numpy(np.asarray(block_params["mix_partner"]).reshape(n) >= 0)
    return torch.where(has_partner & (lam < 0.5), other, own)


def _digest_prefix(shape: Sequence[int]) -> hashlib.blake2b:
    hasher = hashlib.blake2b(digest_size=8, person=_DIGEST_PERSON)
    hasher.update(struct.pack(f"<q{len(shape)}q", len(shape), *shape))
    return hasher


def view_digest(t: torch.Tensor) -> int:
    """64-bit unsigned digest of a view: blake2b over its shape and contiguous float32 bytes."""
    arr = t.detach().to("cpu", torch.float32).contiguous().numpy()
    hasher = _digest_prefix(arr.shape)
    hasher.update(arr.tobytes())
    return int.from_bytes(hasher.digest(), "little")


def view_digests(batch: torch.Tensor) -> np.ndarray:
    """`view_digest` of every row of `batch` [n, ...] as uint64 [n] (one conversion, C hashing).

    Views rendered on a GPU come back to the host only here, and are hashed on a small thread
    pool (hashlib releases the GIL on large buffers): at 224 px hashing costs ~0.66 ms of CPU a
    view, more than issuing the view's kernels, so one thread would bound the GPU renderer. CPU
    views are hashed on the calling thread (a DataLoader worker must not start threads that
    compete with the forward pass). The digests are the same either way.
    """
    arr = batch.detach().to("cpu", torch.float32).contiguous().numpy()
    prefix = _digest_prefix(arr.shape[1:])

    def one(i: int) -> int:
        hasher = prefix.copy()
        hasher.update(memoryview(arr[i]).cast("B"))
        return int.from_bytes(hasher.digest(), "little")

    rows = range(arr.shape[0])
    values = list(_digest_pool().map(one, rows)) if batch.device.type != "cpu" else map(one, rows)
    return np.fromiter(values, dtype=np.uint64, count=arr.shape[0])


_POOL: list[ThreadPoolExecutor] = []


def _digest_pool() -> ThreadPoolExecutor:
    """The process's digest threads (created on first use by a GPU-rendered batch)."""
    if not _POOL:
        workers = max(1, min(8, (os.cpu_count() or 2) - 1))
        _POOL.append(ThreadPoolExecutor(workers, thread_name_prefix="civt-digest"))
    return _POOL[0]
