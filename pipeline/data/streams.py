"""Streaming data loaders over shards: augmented training batches and plain evaluation batches.

Training (:class:`TrainStream`) reads the shards as a stream, split over ranks and DataLoader
workers, shuffles through a seeded buffer, and renders each sample's view from the keyed
augmentation RNG with ``view = epoch`` — so every random choice is a function of (seed, epoch,
key, rank, worker) and a run is reproducible and resumable at any epoch boundary.

How the split works (pure functions below, tested on their own):

- The shard order is permuted per epoch by ``(seed, epoch)``; every rank computes the same order.
- There are ``P = world_size × workers`` *parts*. With at least ``P`` shards, shard ``i`` of the
  permuted order goes whole to part ``i mod P``. With fewer shards (small data), every part reads
  every shard and keeps global sample ``g`` when ``g mod P`` is its part: each sample still lands
  in exactly one part.
- Every rank runs the same number of steps per epoch (DDP needs it): ``max(1, min over ranks of
  samples // batch)``. A rank's steps are spread over its workers in proportion to their samples;
  a worker that runs out before its quota starts its part over (a few repeated samples, like
  ``DistributedSampler``'s padding), one that has more drops the rest.

Batches are built inside the workers (``DataLoader(batch_size=None)``), which is what lets each
worker be given an exact number of steps.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..augment.config import AugmentConfig
from ..runtime.errors import UserError
from .index import ShardIndex

_T = TypeVar("_T")

# A part reads these (shard index in the *original* shard list, kept positions).
PartPlan = list[tuple[int, range]]

DEFAULT_SHUFFLE_BUFFER = 1024
"""Decoded images held for shuffling per worker (uint8, so ~150 MB at 224 px)."""


def _seed_of(*numbers: int) -> int:
    """A 63-bit seed from integers (blake2b), for the shuffle order and the shard order."""
    payload = struct.pack(f"<{len(numbers)}q", *numbers)
    digest = hashlib.blake2b(payload, digest_size=8, person=b"civt-loader-v1").digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def default_image_size(index: ShardIndex) -> int:
    """The training/evaluation side for a shard set: native side < 16 → 16, 16..64 → native,
    unknown or larger → 224 (ImageNet practice)."""
    if index.image_size is None:
        return 224
    side = max(index.image_size)
    if side < 16:
        return 16
    if side <= 64:
        return side
    return 224


# ------------------------------------------------------------------------------ pure planning


def shard_order(num_shards: int, *, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """The order shards are read in this epoch (identical on every rank)."""
    order = list(range(num_shards))
    if shuffle:
        random.Random(_seed_of(seed, epoch, 0x5A4D)).shuffle(order)
    return order


def plan_part(counts: Sequence[int], order: Sequence[int], part: int, num_parts: int) -> PartPlan:
    """What part ``part`` of ``num_parts`` reads: shards (indices into ``counts``) and positions.

    Whole shards round-robin when there are at least ``num_parts`` shards, a stride over the
    concatenated samples otherwise; either way the parts cover every sample exactly once.
    """
    if not 0 <= part < num_parts:
        raise ValueError(f"part {part} is outside 0..{num_parts - 1}")
    if len(order) >= num_parts:
        return [
            (shard, range(counts[shard])) for i, shard in enumerate(order) if i % num_parts == part
        ]
    plan: PartPlan = []
    offset = 0
    for shard in order:
        start = (part - offset) % num_parts
        if start < counts[shard]:
            plan.append((shard, range(start, counts[shard], num_parts)))
        offset += counts[shard]
    return plan


def plan_size(plan: PartPlan) -> int:
    """Samples a part's plan yields in one pass."""
    return sum(len(positions) for _, positions in plan)


def steps_per_rank(
    counts: Sequence[int], order: Sequence[int], *, world_size: int, workers: int, batch_size: int
) -> int:
    """Optimizer steps every rank runs in one epoch: the smallest rank's full batches (>= 1)."""
    num_parts = world_size * workers
    rank_sizes = [
        sum(plan_size(plan_part(counts, order, r * workers + w, num_parts)) for w in range(workers))
        for r in range(world_size)
    ]
    return max(1, min(rank_sizes) // batch_size)


def worker_quotas(sizes: Sequence[int], steps: int, batch_size: int) -> list[int]:
    """Split a rank's ``steps`` over its workers in proportion to their samples ``sizes``.

    Largest-remainder rounding, so the quotas sum to ``steps`` and a worker is asked for more
    than it holds only when the whole rank is short (it then repeats samples).
    """
    total = sum(sizes)
    if total == 0:
        return [0 for _ in sizes]
    exact = [steps * size / total for size in sizes]
    quotas = [int(x) for x in exact]
    by_remainder = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - quotas[i]), i))
    for i in by_remainder[: steps - sum(quotas)]:
        quotas[i] += 1
    return quotas


# ------------------------------------------------------------------------------ the streams


@dataclass(frozen=True, slots=True)
class TrainStreamConfig:
    """How :class:`TrainStream` reads and augments."""

    batch_size: int
    """Samples per batch on each rank."""
    seed: int = 0
    """Seeds the augmentation (keyed by epoch and sample key), the shard order and the shuffle."""
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER
    """Samples held for shuffling per worker; 1 keeps the shard order."""
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.shuffle_buffer < 1:
            raise UserError(
                f"the shuffle buffer must hold at least 1 sample, got {self.shuffle_buffer}"
            )
        if not 0 <= self.seed < 2**63:
            raise UserError(f"--seed must lie in [0, 2**63), got {self.seed}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside 0..{self.world_size - 1}")


def _worker_slot(num_workers: int) -> int:
    info = get_worker_info()
    if info is None:
        return 0
    if info.num_workers != num_workers:
        raise RuntimeError(
            f"the stream was planned for {num_workers} workers but runs in {info.num_workers}"
        )
    return info.id


def _read_part(shard_set: object, plan: PartPlan, channels: int) -> Iterator[tuple[int, object]]:
    """``(shard index, decoded sample)`` of a plan, in plan order; other positions are skipped."""
    from .reader import iter_shard

    paths = shard_set.paths  # type: ignore[attr-defined]
    for shard, positions in plan:
        for sample in iter_shard(paths[shard], channels=channels):
            if sample.position in positions:
                yield shard, sample


def buffer_shuffle(items: Iterator[_T], size: int, rng: random.Random) -> Iterator[_T]:
    """Shuffle a stream through a buffer of ``size`` items (WebDataset's ``shuffle``), seeded.

    Every item comes out exactly once; ``size`` 1 keeps the order.
    """
    buffer: list[_T] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = rng.randrange(size)
        buffer[i], item = item, buffer[i]
        yield item
    rng.shuffle(buffer)
    yield from buffer


class TrainStream(IterableDataset):  # type: ignore[type-arg]
    """Augmented training batches ``(images float32 [B, C, S, S] in [0, 1], labels int64 [B])``.

    Call :meth:`set_epoch` before iterating each epoch. Each rank gets exactly
    :meth:`steps` batches per epoch whatever the number of workers.

    Args:
        shard_set: a ``ShardSet`` (its ``paths`` and ``index``).
        augment: the augmentation recipe; mixing is not supported here (teachers train on
            hard labels), so ``augment.mixing`` must be off.
        cfg: batch size, seed, shuffle buffer and this process's rank.
        workers: DataLoader workers this stream will run in (0 = in the main process).
    """

    def __init__(
        self, shard_set: object, augment: AugmentConfig, cfg: TrainStreamConfig, *, workers: int = 0
    ) -> None:
        super().__init__()
        if augment.mixing:
            raise UserError(
                "the training stream renders unmixed views; use an augmentation without mixing"
            )
        self.shard_set = shard_set
        self.index: ShardIndex = shard_set.index  # type: ignore[attr-defined]
        self.augment = augment
        self.cfg = cfg
        self.workers = max(1, workers)
        self.epoch = 0
        self.counts = [s.num_samples for s in self.index.shards]
        if sum(self.counts) < cfg.world_size * self.workers:
            raise UserError(
                f"the shard set holds {sum(self.counts)} samples, fewer than the "
                f"{cfg.world_size} rank(s) × {self.workers} worker(s) reading it"
            )

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch: it is the augmentation view index and seeds the order."""
        self.epoch = epoch

    def steps(self) -> int:
        """Batches each rank yields per epoch."""
        order = shard_order(len(self.counts), seed=self.cfg.seed, epoch=self.epoch, shuffle=True)
        return steps_per_rank(
            self.counts,
            order,
            world_size=self.cfg.world_size,
            workers=self.workers,
            batch_size=self.cfg.batch_size,
        )

    def __len__(self) -> int:
        return self.steps()

    def _plans(self) -> tuple[PartPlan, int]:
        """This worker's plan and its quota of batches."""
        worker = _worker_slot(self.workers) if self.workers > 1 else 0
        order = shard_order(len(self.counts), seed=self.cfg.seed, epoch=self.epoch, shuffle=True)
        num_parts = self.cfg.world_size * self.workers
        first = self.cfg.rank * self.workers
        plans = [plan_part(self.counts, order, first + w, num_parts) for w in range(self.workers)]
        quotas = worker_quotas([plan_size(p) for p in plans], self.steps(), self.cfg.batch_size)
        return plans[worker], quotas[worker]

    def iter_samples(self) -> Iterator[tuple[int, object]]:
        """``(shard index, Sample)`` in this worker's training order for the epoch, undecorated.

        Exactly ``quota × batch_size`` samples: the part's samples through the seeded shuffle
        buffer, starting the part over only if it is shorter than the quota.
        """
        plan, quota = self._plans()
        if quota == 0:
            return
        worker = _worker_slot(self.workers) if self.workers > 1 else 0
        rng = random.Random(_seed_of(self.cfg.seed, self.epoch, self.cfg.rank, worker))

        def passes() -> Iterator[tuple[int, object]]:
            while True:
                yield from _read_part(self.shard_set, plan, self.index.channels)

        needed = itertools.islice(passes(), quota * self.cfg.batch_size)
        yield from buffer_shuffle(needed, self.cfg.shuffle_buffer, rng)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from ..augment.params import sample_view_params
        from ..augment.render import render_view

        images: list[torch.Tensor] = []
        labels: list[int] = []
        for shard, sample in self.iter_samples():
            image = sample.image  # type: ignore[attr-defined]
            params = sample_view_params(
                self.cfg.seed,
                self.epoch,
                sample.key,  # type: ignore[attr-defined]
                sample.position,  # type: ignore[attr-defined]
                (int(image.shape[-2]), int(image.shape[-1])),
                self.counts[shard],
                self.augment,
            )
            images.append(render_view(image, params, self.augment))
            labels.append(int(sample.label))  # type: ignore[attr-defined]
            if len(images) == self.cfg.batch_size:
                yield torch.stack(images), torch.tensor(labels, dtype=torch.int64)
                images, labels = [], []


class EvalBatch(NamedTuple):
    """One evaluation batch; ``shards``/``positions`` name its rows (for store lookups)."""

    images: torch.Tensor
    """float32 ``[B, C, S, S]`` in [0, 1] (resize + center crop)."""
    labels: torch.Tensor
    """int64 ``[B]``."""
    shards: torch.Tensor
    """int64 ``[B]``: index of each sample's shard in the shard set."""
    positions: torch.Tensor
    """int64 ``[B]``: each sample's position inside its shard."""


class EvalStream(IterableDataset):  # type: ignore[type-arg]
    """Every sample of a shard set exactly once (over all ranks and workers), as :class:`EvalBatch`.

    Args:
        shard_set: a ``ShardSet``.
        image_size: side of the square center crop.
        batch_size: samples per batch (the last batch of a worker may be smaller).
        rank, world_size: this process's share when evaluating under torchrun.
        workers: DataLoader workers this stream will run in (0 = in the main process).
    """

    def __init__(
        self,
        shard_set: object,
        *,
        image_size: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {batch_size}")
        self.shard_set = shard_set
        self.index: ShardIndex = shard_set.index  # type: ignore[attr-defined]
        self.image_size = image_size
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.workers = max(1, workers)
        self.counts = [s.num_samples for s in self.index.shards]

    def __iter__(self) -> Iterator[EvalBatch]:
        from ..augment.render import eval_view

        worker = _worker_slot(self.workers) if self.workers > 1 else 0
        order = shard_order(len(self.counts), seed=0, epoch=0, shuffle=False)
        num_parts = self.world_size * self.workers
        plan = plan_part(self.counts, order, self.rank * self.workers + worker, num_parts)
        rows: list[tuple[torch.Tensor, int, int, int]] = []
        for shard, sample in _read_part(self.shard_set, plan, self.index.channels):
            view = eval_view(sample.image, self.image_size)  # type: ignore[attr-defined]
            rows.append((view, int(sample.label), shard, int(sample.position)))  # type: ignore[attr-defined]
            if len(rows) == self.batch_size:
                yield _eval_batch(rows)
                rows = []
        if rows:
            yield _eval_batch(rows)


def _eval_batch(rows: list[tuple[torch.Tensor, int, int, int]]) -> EvalBatch:
    return EvalBatch(
        images=torch.stack([r[0] for r in rows]),
        labels=torch.tensor([r[1] for r in rows], dtype=torch.int64),
        shards=torch.tensor([r[2] for r in rows], dtype=torch.int64),
        positions=torch.tensor([r[3] for r in rows], dtype=torch.int64),
    )


def _init_worker(_: int) -> None:
    # Workers decode and augment; letting each also spawn a full set of torch threads would
    # oversubscribe the cores the training step needs.
    torch.set_num_threads(1)


def make_loader(stream: TrainStream | EvalStream, *, workers: int) -> DataLoader:  # type: ignore[type-arg]
    """A DataLoader over a stream that already yields whole batches."""
    if workers < 0:
        raise UserError(f"--workers must be 0 or more, got {workers}")
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        worker_init_fn=_init_worker if workers > 0 else None,
        persistent_workers=False,
    )
