"""The student's input stream: shards + the store's view of the epoch → replayed, shuffled batches.

Stage two must show the student, for every (row, view), the tensor the teachers saw in stage
one, and it must do so in an order that depends only on ``(seed, epoch, rank)`` — never on how
many DataLoader workers rendered it or in which order they finished. The stream is therefore
planned up front, at the level of sample *ordinals*, before a single image is decoded:

1. :func:`plan_epoch` shuffles the shard order with ``(seed, epoch)``, gives rank ``r`` the
   shards ``order[r::world]``, cycles them until the rank holds ``steps × batch`` samples (every
   rank takes the same number of steps, ``steps = N_valid // (world × batch)``) and runs a
   seeded shuffle buffer over the ordinals. Batch ``s`` is ``order[s·B:(s+1)·B]``.
2. Workers (:class:`_BlockDataset`) read their segments shard by shard, mix block by mix block,
   rebuild each block's view (store mode: :func:`civt_pipe.pipeline.augment.blocks.replay` from the
   stored parameters, digest checked; online mode: :func:`~civt_pipe.pipeline.augment.blocks.
   sample_and_render`) and yield blocks tagged with the ordinals they carry.
3. The main process (:func:`iter_batches`) keeps received samples by ordinal and emits them in
   planned order. Arrival order changes memory use, not results.

Resuming inside an epoch re-plans the epoch and skips the consumed ordinals; blocks that hold no
needed ordinal are decoded (the tar is sequential) but never rendered.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..augment.config import AugmentConfig
from ..runtime.errors import UserError

VERIFY_MODES = ("all", "sample", "off")


# --------------------------------------------------------------------------------------------
# Planning (pure)


@dataclass(frozen=True, slots=True)
class ShardRows:
    """A shard as the stream sees it: where it is and which positions have a usable view."""

    name: str
    """Basename, as listed in the store."""
    path: str
    """Path of the tar on this machine."""
    count: int
    """Samples in the shard (valid or not); partners are drawn among them."""
    valid: np.ndarray
    """int64 positions (ascending) whose sample has a view (not skipped in stage one)."""


@dataclass(frozen=True, slots=True)
class Segment:
    """One pass over (a prefix of) one shard inside a rank's epoch stream."""

    shard: int
    """Index into the shard list given to :func:`plan_epoch`."""
    positions: np.ndarray
    """int64 shard positions, in shard order, that this pass yields."""
    start: int
    """Ordinal of ``positions[0]`` in the rank's stream."""


@dataclass(frozen=True, slots=True)
class EpochPlan:
    """Everything one rank reads and emits in one epoch, decided before reading."""

    epoch: int
    view: int
    steps: int
    batch_size: int
    segments: tuple[Segment, ...]
    order: np.ndarray
    """int64 ordinals in emission order, length ``steps × batch_size``."""

    def batch_ordinals(self, step: int) -> np.ndarray:
        return self.order[step * self.batch_size : (step + 1) * self.batch_size]


def epoch_view(epoch: int, num_views: int) -> int:
    """Epoch ``e`` trains on view ``e mod V``."""
    return epoch % num_views


def steps_per_epoch(num_valid: int, world_size: int, batch_size: int) -> int:
    """Steps every rank takes per epoch: ``N_valid // (world × batch)`` (remainder dropped)."""
    return num_valid // (world_size * batch_size)


def shard_order(num_shards: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's shard permutation, a pure function of ``(seed, epoch)`` (same on every rank)."""
    rng = np.random.default_rng([seed, epoch, 0x5A4D])
    return rng.permutation(num_shards)


def buffer_shuffle(n: int, buffer_size: int, rng: np.random.Generator) -> np.ndarray:
    """The order a shuffle buffer of ``buffer_size`` would emit ``0..n-1`` in.

    Streaming-friendly: the item emitted at output position ``j`` has arrived by input position
    ``j + buffer_size``, so a consumer never holds more than about ``buffer_size`` items.
    """
    size = min(max(buffer_size, 1), n)
    out = np.empty(n, dtype=np.int64)
    buf = np.arange(size, dtype=np.int64)
    slots = rng.integers(0, size, size=n - size) if n > size else np.empty(0, np.int64)
    for j, slot in enumerate(slots.tolist()):
        out[j] = buf[slot]
        buf[slot] = size + j
    out[n - size :] = rng.permutation(buf)
    return out


def plan_epoch(
    shards: Sequence[ShardRows],
    *,
    seed: int,
    epoch: int,
    num_views: int,
    rank: int,
    world_size: int,
    batch_size: int,
    shuffle_buffer: int,
) -> EpochPlan:
    """Plan one rank's epoch (see the module docstring). Same inputs, same plan, anywhere."""
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
    perm = shard_order(len(shards), seed, epoch)
    mine = [int(i) for i in perm[rank::world_size] if len(shards[int(i)].valid)]
    if not mine:
        raise UserError(f"rank {rank} got only shards without usable samples in epoch {epoch}")
    needed = steps * batch_size
    segments: list[Segment] = []
    total = 0
    cycle = 0
    # Cycling pads a rank with fewer samples so every rank takes exactly `steps` steps.
    while total < needed:
        index = mine[cycle % len(mine)]
        positions = shards[index].valid[: needed - total]
        segments.append(Segment(shard=index, positions=positions, start=total))
        total += len(positions)
        cycle += 1
    rng = np.random.default_rng([seed, epoch, rank, 0xB0F])
    order = buffer_shuffle(needed, shuffle_buffer, rng)
    return EpochPlan(
        epoch=epoch,
        view=epoch_view(epoch, num_views),
        steps=steps,
        batch_size=batch_size,
        segments=tuple(segments),
        order=order,
    )


# --------------------------------------------------------------------------------------------
# Rendering (in workers)


@dataclass(slots=True)
class StreamBlock:
    """One rendered mix block, reduced to the samples the plan still needs."""

    ordinals: np.ndarray
    """int64 [n] stream ordinals of the rows."""
    keys: list[str]
    images: Tensor
    """float32 [n, C, S, S], bit-identical to stage one's view."""
    label_targets: Tensor
    """float32 [n, num_classes] λ-mix of own and partner labels."""
    teachers: dict[str, tuple[Tensor, Tensor, Tensor]] = field(default_factory=dict)
    """Store mode: per teacher (logprobs f16 [n, k], indices [n, k], lse f32 [n])."""


@dataclass(frozen=True, slots=True)
class _Failure:
    """A user error inside a worker, carried to the main process as data (one clean line)."""

    message: str


@dataclass(frozen=True, slots=True)
class ViewSource:
    """Where a block's view comes from: the store (replay) or fresh sampling (online mode)."""

    aug: AugmentConfig
    seed: int
    num_classes: int
    channels: int
    store_path: str | None = None
    """Set in store mode; None in online mode."""
    verify: str = "sample"
    """Digest checks in store mode: ``all`` blocks, ``sample`` (first per segment), ``off``."""

    def __post_init__(self) -> None:
        if self.verify not in VERIFY_MODES:
            raise UserError(
                f"--verify-replay must be one of {', '.join(VERIFY_MODES)}, got {self.verify!r}"
            )


def render_segment(
    source: ViewSource,
    store: Any,
    shard: ShardRows,
    segment: Segment,
    view: int,
    needed: np.ndarray,
) -> Iterator[StreamBlock]:
    """Yield the needed rows of one segment, block by block, in shard order."""
    from ..augment.blocks import iter_blocks, replay, sample_and_render
    from ..augment.render import mixed_targets
    from ..data.reader import iter_shard

    positions = segment.positions
    ordinals = range(segment.start, segment.start + len(positions))
    ordinal_of = dict(zip(positions.tolist(), ordinals, strict=True))
    last = int(positions[-1])
    stored = store.read_view(shard.name, view) if store is not None else None
    verified_any = False
    samples = iter_shard(shard.path, channels=source.channels, on_error="skip")
    for block in iter_blocks(samples, source.aug.mix_block):
        first = block[0].position
        if first > last:
            break
        rows = [
            i
            for i, s in enumerate(block)
            if s.position in ordinal_of and needed[ordinal_of[s.position]]
        ]
        if not rows:
            continue
        block_pos = np.array([s.position for s in block], dtype=np.int64)
        keys = [s.key for s in block]
        labels = np.array([s.label for s in block], dtype=np.int64)
        if stored is None:
            rendered = sample_and_render(
                block, source.seed, [view], shard.count, source.aug, num_classes=source.num_classes
            )
            images = rendered.views[:, 0]
            assert rendered.label_targets is not None
            targets = rendered.label_targets[:, 0]
            teachers: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
        else:
            stored_keys = [stored.keys[p] for p in block_pos.tolist()]
            for key, stored_key, pos in zip(keys, stored_keys, block_pos.tolist(), strict=True):
                if str(stored_key) != key:
                    raise UserError(
                        f"shard {shard.name} position {pos} holds key {key!r} but the store's "
                        f"row holds {str(stored_key)!r}; the store was built from other shards"
                    )
            params = {name: np.asarray(value[block_pos]) for name, value in stored.aug.items()}
            replayed = replay(block, params, source.aug)
            check = source.verify == "all" or (source.verify == "sample" and not verified_any)
            if check:
                verified_any = True
                expected = np.asarray(stored.digests[block_pos], dtype=np.uint64)
                bad = np.flatnonzero(replayed.digests != expected)
                if len(bad):
                    i = int(bad[0])
                    raise UserError(
                        f"replayed view {view} of sample {keys[i]!r} (shard {shard.name}) does "
                        "not match the digest stored in stage one; the images or the augmentation "
                        "code changed since dump-logits"
                    )
            images = replayed.views
            partner = np.asarray(params["mix_partner"], np.int64)
            index_of = {int(p): i for i, p in enumerate(block_pos.tolist())}
            partner_labels = np.array(
                [labels[index_of[int(p)]] if p >= 0 else labels[i] for i, p in enumerate(partner)],
                dtype=np.int64,
            )
            targets = mixed_targets(
                torch.as_tensor(labels), torch.as_tensor(partner_labels), params, source.num_classes
            )
            rows_t = torch.as_tensor(block_pos)
            teachers = {
                name: (
                    torch.as_tensor(topk.logprobs)[rows_t],
                    torch.as_tensor(topk.indices)[rows_t].long(),
                    torch.as_tensor(topk.lse)[rows_t],
                )
                for name, topk in stored.teachers.items()
            }
        for i in rows:
            if block[i].image is None:
                raise UserError(
                    f"sample {keys[i]!r} in shard {shard.name} no longer decodes "
                    f"({block[i].error}); it had a view in stage one"
                )
        take = torch.as_tensor(rows, dtype=torch.long)
        yield StreamBlock(
            ordinals=np.array([ordinal_of[block[i].position] for i in rows], dtype=np.int64),
            keys=[keys[i] for i in rows],
            images=images[take].contiguous(),
            label_targets=targets[take].float().contiguous(),
            teachers={
                name: (lp[take].contiguous(), ix[take].contiguous(), lse[take].contiguous())
                for name, (lp, ix, lse) in teachers.items()
            },
        )


class _BlockDataset(IterableDataset):  # type: ignore[type-arg]
    """Worker side: segment ``j`` is rendered by worker ``j mod num_workers``."""

    def __init__(
        self, source: ViewSource, shards: Sequence[ShardRows], plan: EpochPlan, needed: np.ndarray
    ) -> None:
        self.source = source
        self.shards = list(shards)
        self.plan = plan
        self.needed = needed

    def __iter__(self) -> Iterator[StreamBlock | _Failure]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        store = None
        if self.source.store_path is not None:
            from ...stores.logit_store import LogitStore

            store = LogitStore.open(self.source.store_path)
        for j, segment in enumerate(self.plan.segments):
            if j % workers != worker:
                continue
            seg_needed = self.needed[segment.start : segment.start + len(segment.positions)]
            if not seg_needed.any():
                continue
            try:
                yield from render_segment(
                    self.source,
                    store,
                    self.shards[segment.shard],
                    segment,
                    self.plan.view,
                    self.needed,
                )
            except UserError as err:
                yield _Failure(str(err))
                return


# --------------------------------------------------------------------------------------------
# Batching (main process)


@dataclass(slots=True)
class StudentBatch:
    """One training batch."""

    images: Tensor
    """float32 [B, C, S, S] in [0, 1]."""
    label_targets: Tensor
    """float32 [B, num_classes]."""
    teachers: dict[str, tuple[Tensor, Tensor, Tensor]]
    """Store mode: per teacher (logprobs, indices, lse) of its top-k; empty in online mode."""
    keys: list[str]


def _keep(item: Any) -> Any:
    """Collate function: items are whole blocks already; pass them through untouched."""
    return item


def iter_batches(
    source: ViewSource,
    shards: Sequence[ShardRows],
    plan: EpochPlan,
    *,
    start_step: int = 0,
    workers: int = 0,
) -> Iterator[StudentBatch]:
    """The plan's batches from ``start_step`` on, identical for any number of ``workers``."""
    needed = np.zeros(len(plan.order), dtype=bool)
    needed[plan.order[start_step * plan.batch_size :]] = True
    dataset = _BlockDataset(source, shards, plan, needed)
    loader = DataLoader(
        dataset,
        batch_size=None,
        collate_fn=_keep,
        num_workers=workers,
        persistent_workers=False,
        prefetch_factor=2 if workers > 0 else None,
    )
    blocks = iter(loader)
    pending: dict[int, tuple[StreamBlock, int]] = {}

    def pull(ordinal: int) -> tuple[StreamBlock, int]:
        while ordinal not in pending:
            try:
                item = next(blocks)
            except StopIteration:
                raise RuntimeError(f"the stream ended before ordinal {ordinal}") from None
            if isinstance(item, _Failure):
                raise UserError(item.message)
            for row, o in enumerate(item.ordinals.tolist()):
                pending[o] = (item, row)
        return pending.pop(ordinal)

    for step in range(start_step, plan.steps):
        rows = [pull(int(o)) for o in plan.batch_ordinals(step)]
        names = rows[0][0].teachers.keys()
        yield StudentBatch(
            images=torch.stack([b.images[r] for b, r in rows]),
            label_targets=torch.stack([b.label_targets[r] for b, r in rows]),
            teachers={
                name: tuple(  # type: ignore[misc]
                    torch.stack([b.teachers[name][part][r] for b, r in rows]) for part in range(3)
                )
                for name in names
            },
            keys=[b.keys[r] for b, r in rows],
        )


def shard_rows_for(paths: Sequence[str | Path], counts: Sequence[int]) -> list[ShardRows]:
    """Shards whose every position is usable (online mode, or a store without skipped rows)."""
    return [
        ShardRows(
            name=Path(p).name, path=str(p), count=int(c), valid=np.arange(int(c), dtype=np.int64)
        )
        for p, c in zip(paths, counts, strict=True)
    ]
