"""The one stream planner: which samples each rank reads, in which order, before any decoding.

Every stage reads shards the same way. A plan is made per rank (and per epoch) from the shard
list alone — pure functions, no I/O — at the level of sample *ordinals*: the rank's stream is a
list of :class:`Segment` (one pass over some positions of one shard), ordinal ``i`` is the
``i``-th sample of those segments in order, and :attr:`StreamPlan.order` says in which order the
ordinals are emitted. DataLoader workers only render segments (segment ``j`` goes to worker
``j mod W``, :func:`worker_segments`); the main process re-orders what arrives into the planned
batches. So a plan, and every batch, is independent of the number of workers.

The rules, the same for every stage:

- **Shard order.** Training permutes the shards per epoch by ``(seed, epoch)``
  (:func:`shard_order`); a pass without shuffling (evaluation, ``dump-logits``) keeps the list's
  order. Every rank computes the same order.
- **Ranks.** Shards are never split: rank ``r`` of ``W`` reads the shards ``order[r::W]``
  (:func:`rank_shards`, webdataset's ``split_by_node``). With fewer shards than ranks some ranks
  get nothing: a pass accepts that (evaluation sums its counts over ranks, the dump writes what
  it has), training refuses it with an error that asks for smaller shards — DDP needs every rank
  to take the same steps on real data.
- **Training** (:func:`plan_training`; train-teacher and train-student): every rank takes
  ``steps = N_valid // (W × batch)`` steps. A rank cycles through its shards until it holds
  ``steps × batch`` samples (a rank with fewer samples repeats a few, like
  ``DistributedSampler``'s padding; one with more drops the rest), then a seeded shuffle buffer
  over the ordinals (:func:`buffer_shuffle`, keyed by ``(seed, epoch, rank)``) gives the order.
- **Pass** (:func:`plan_pass`; evaluation and ``dump-logits``): every usable position of the
  rank's shards once, in shard order; the last batch may be short.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..runtime.errors import UserError
from ..runtime.seeds import keyed_seed
from .remote import shard_name

SHARD_ORDER_DOMAIN = "civt-shards-v1"
SHUFFLE_DOMAIN = "civt-shuffle-v1"


@dataclass(frozen=True, slots=True)
class ShardRows:
    """A shard as the stream sees it: where it is and which positions have a usable sample."""

    name: str
    """Basename, as listed in the index and the store."""
    path: str
    """Path of the tar on this machine, or its URL or ``pipe:`` command."""
    count: int
    """Samples in the shard (usable or not); mixup partners are drawn among them."""
    valid: np.ndarray
    """int64 positions (ascending) to read: all of them, or those a store has a view for."""


def shard_rows_for(paths: Sequence[str | Path], counts: Sequence[int]) -> list[ShardRows]:
    """Shards whose every position is usable (no store, or a store without skipped rows)."""
    return [
        ShardRows(
            name=shard_name(p), path=str(p), count=int(c), valid=np.arange(int(c), dtype=np.int64)
        )
        for p, c in zip(paths, counts, strict=True)
    ]


@dataclass(frozen=True, slots=True)
class Segment:
    """One pass over some positions of one shard inside a rank's stream."""

    shard: int
    """Index into the shard list the plan was made from."""
    positions: np.ndarray
    """int64 shard positions, ascending, that this pass yields."""
    start: int
    """Ordinal of ``positions[0]`` in the rank's stream."""

    def ordinals(self) -> np.ndarray:
        """int64 ordinal of every position of the segment."""
        return np.arange(self.start, self.start + len(self.positions), dtype=np.int64)


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """Everything one rank reads and emits (in one epoch), decided before reading."""

    segments: tuple[Segment, ...]
    order: np.ndarray
    """int64 ordinals in emission order (a permutation of ``0..len(order)-1``)."""
    batch_size: int

    @property
    def steps(self) -> int:
        """Batches of the plan; the last one is short when ``batch_size`` does not divide it."""
        return -(-len(self.order) // self.batch_size)

    def batch_ordinals(self, step: int) -> np.ndarray:
        """The ordinals of batch ``step``, in order."""
        return self.order[step * self.batch_size : (step + 1) * self.batch_size]


def shard_order(num_shards: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's shard permutation, a pure function of ``(seed, epoch)`` (same on every rank)."""
    rng = np.random.default_rng(keyed_seed(SHARD_ORDER_DOMAIN, seed, epoch))
    return rng.permutation(num_shards)


def rank_shards(order: Sequence[int] | np.ndarray, rank: int, world_size: int) -> list[int]:
    """The shards (of ``order``) rank ``rank`` reads: ``order[rank::world_size]``, whole."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of size {world_size}")
    return [int(i) for i in list(order)[rank::world_size]]


def worker_segments(num_segments: int, worker: int, workers: int) -> range:
    """The segments DataLoader worker ``worker`` of ``workers`` renders: ``j ≡ worker mod W``."""
    if workers < 1 or not 0 <= worker < workers:
        raise ValueError(f"worker {worker} is outside {workers} workers")
    return range(worker, num_segments, workers)


def steps_per_epoch(num_valid: int, world_size: int, batch_size: int) -> int:
    """Training steps every rank takes per epoch: ``N_valid // (world × batch)``."""
    return num_valid // (world_size * batch_size)


def buffer_shuffle(n: int, buffer_size: int, rng: np.random.Generator) -> np.ndarray:
    """The order a shuffle buffer of ``buffer_size`` would emit ``0..n-1`` in (WebDataset-style).

    Streaming-friendly: the item emitted at output position ``j`` has arrived by input position
    ``j + buffer_size``, so a consumer never holds more than about ``buffer_size`` items.
    ``buffer_size`` 1 keeps the order.
    """
    size = min(max(buffer_size, 1), n)
    out = np.empty(n, dtype=np.int64)
    if n == 0:
        return out
    buf = np.arange(size, dtype=np.int64)
    slots = rng.integers(0, size, size=n - size) if n > size else np.empty(0, np.int64)
    for j, slot in enumerate(slots.tolist()):
        out[j] = buf[slot]
        buf[slot] = size + j
    out[n - size :] = rng.permutation(buf)
    return out


def plan_training(
    shards: Sequence[ShardRows],
    *,
    seed: int,
    epoch: int,
    rank: int,
    world_size: int,
    batch_size: int,
    shuffle_buffer: int,
) -> StreamPlan:
    """Plan one rank's training epoch (module docstring): ``steps`` full, shuffled batches.

    Raises:
        UserError: the data cannot fill one batch per rank, there are fewer shards than ranks,
            or this rank's shards hold no usable sample.
    """
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    num_valid = sum(len(s.valid) for s in shards)
    steps = steps_per_epoch(num_valid, world_size, batch_size)
    if steps == 0:
        raise UserError(
            f"{num_valid} usable samples cannot fill one batch of {batch_size} per rank on "
            f"{world_size} rank(s); lower --batch-size"
        )
    if len(shards) < world_size:
        raise UserError(
            f"{len(shards)} shard(s) cannot feed {world_size} ranks; write more, smaller shards "
            "(make-shards --shard-size)"
        )
    order = shard_order(len(shards), seed, epoch)
    mine = [i for i in rank_shards(order, rank, world_size) if len(shards[i].valid)]
    if not mine:
        raise UserError(f"rank {rank} got only shards without usable samples in epoch {epoch}")
    needed = steps * batch_size
    segments: list[Segment] = []
    total = 0
    cycle = 0
    while total < needed:
        index = mine[cycle % len(mine)]
        positions = shards[index].valid[: needed - total]
        segments.append(Segment(shard=index, positions=positions, start=total))
        total += len(positions)
        cycle += 1
    rng = np.random.default_rng(keyed_seed(SHUFFLE_DOMAIN, seed, epoch, rank))
    return StreamPlan(
        segments=tuple(segments),
        order=buffer_shuffle(needed, shuffle_buffer, rng),
        batch_size=batch_size,
    )


def plan_pass(
    shards: Sequence[ShardRows], *, rank: int, world_size: int, batch_size: int
) -> StreamPlan:
    """Plan one rank's share of a single pass (module docstring): every usable position once.

    Every shard of the rank is a segment, even one without usable positions, so a consumer
    that works shard by shard (the dump) hears of it.
    """
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    segments: list[Segment] = []
    total = 0
    for index in rank_shards(range(len(shards)), rank, world_size):
        positions = shards[index].valid
        segments.append(Segment(shard=index, positions=positions, start=total))
        total += len(positions)
    return StreamPlan(
        segments=tuple(segments), order=np.arange(total, dtype=np.int64), batch_size=batch_size
    )
