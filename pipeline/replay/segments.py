"""Training views of a segment: replayed from the store (stage two) or drawn fresh (online).

The stream (:mod:`..data.streams`) plans who reads what and puts blocks back in batch order;
what is specific to training views lives here. :func:`render_segment` reads one segment's shard
mix block by mix block and rebuilds the view of every needed row:

- **store mode** (train-student with ``--store``): :func:`~..augment.blocks.replay` from the
  stored parameters of the view, after checking the row's key, with the stored digest checked
  (``--verify-replay``), plus the stored top-k logits of every teacher;
- **online mode** (train-student with live teachers, and train-teacher with an unmixed
  recipe): :func:`~..augment.blocks.sample_and_render` keyed by ``(seed, view, key)``.

:func:`iter_view_batches` is the whole stream for a training epoch: the plan's batches of
:class:`ViewBatch`, independent of the number of workers, from any step on (resume);
:class:`ViewStream` plans it epoch by epoch for one rank (train-student, the Python API's
``ReplayedViews``, and through :class:`FreshViews` train-teacher and train-cakd).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...stores.logit_store import LogitStore
from ...stores.topk import TopKLogits
from ..augment.config import AugmentConfig
from ..data.imageio import Decoder
from ..data.planning import Segment, ShardRows, StreamPlan, plan_training
from ..data.streams import planned_batches
from ..runtime.errors import UserError
from .labels import check_recorded_labels
from .modes import VERIFY_MODES


def epoch_view(epoch: int, num_views: int) -> int:
    """Epoch ``e`` of train-student trains on stored view ``e mod V``."""
    return epoch % num_views


@dataclass(frozen=True, slots=True)
class ViewSource:
    """Where a block's view comes from: the store (replay) or fresh sampling (online mode)."""

    aug: AugmentConfig
    seed: int
    num_classes: int
    channels: int
    store: LogitStore | None = None
    """Store mode: the store :func:`..binding.bind_store` opened and checked (a DataLoader
    worker gets a copy that reopens it without repeating the check); None in online mode."""
    verify: str = "sample"
    """Digest checks in store mode: ``all`` blocks, ``sample`` (first per segment), ``off``."""
    teachers: tuple[str, ...] | None = None
    """Store mode: the teachers whose top-k is read (None: every teacher of the store)."""
    topk: int | None = None
    """Store mode: keep the first ``topk`` stored entries per row (None: all k)."""
    decoder: Decoder = "torchvision"
    """The image decoder; in store mode the store's (:attr:`..binding.DataBinding.decoder`)."""
    render_device: str = "cpu"
    """Where views are rendered and returned (``cpu`` or ``cuda:N``, main process only); in
    store mode on the store's device type (:attr:`..binding.DataBinding.render_device`)."""

    def __post_init__(self) -> None:
        if self.verify not in VERIFY_MODES:
            raise UserError(
                f"--verify-replay must be one of {', '.join(VERIFY_MODES)}, got {self.verify!r}"
            )


@dataclass(slots=True)
class StreamBlock:
    """One rendered mix block, reduced to the rows the plan still needs."""

    ordinals: np.ndarray
    """int64 [n] stream ordinals of the rows."""
    keys: list[str]
    images: Tensor
    """float32 [n, C, S, S], bit-identical to stage one's view."""
    labels: Tensor
    """int64 [n] ground-truth label of each row's own sample."""
    label_targets: Tensor
    """float32 [n, num_classes] λ-mix of own and partner labels."""
    teachers: dict[str, TopKLogits] = field(default_factory=dict)
    """Store mode: per teacher its stored top-k of the rows ``[n, k]``; empty in online mode."""


def render_segment(
    source: ViewSource,
    store: Any,
    shard: ShardRows,
    segment: Segment,
    view: int,
    needed: np.ndarray,
) -> Iterator[StreamBlock]:
    """Yield the needed rows of one segment, block by block, in shard order.

    Args:
        source: the view source; ``store`` is its opened store (None in online mode).
        shard, segment: what to read (``segment.positions`` of ``shard``).
        view: the view index to replay or draw.
        needed: bool per position of the segment; only those rows are rendered and yielded.
    """
    from ..augment.blocks import iter_blocks, replay, sample_and_render
    from ..augment.render import mixed_targets
    from ..data.reader import iter_shard

    positions = segment.positions
    ordinal_of = {
        int(p): segment.start + i
        for i, (p, keep) in enumerate(zip(positions.tolist(), needed.tolist(), strict=True))
        if keep
    }
    if not ordinal_of:
        return
    last = max(ordinal_of)
    stored = (
        store.read_view(shard.name, view, source.teachers, topk=source.topk)
        if store is not None
        else None
    )
    verified_any = False
    device = torch.device(source.render_device)
    samples = iter_shard(
        shard.path,
        channels=source.channels,
        on_error="skip",
        decoder=source.decoder,
        keep_on_device=device.type == "cuda",
    )
    for block in iter_blocks(samples, source.aug.mix_block):
        if block[0].position > last:
            break
        rows = [i for i, s in enumerate(block) if s.position in ordinal_of]
        if not rows:
            continue
        block_pos = np.array([s.position for s in block], dtype=np.int64)
        keys = [s.key for s in block]
        labels = np.array([s.label for s in block], dtype=np.int64)
        if stored is None:
            rendered = sample_and_render(
                block,
                source.seed,
                [view],
                shard.count,
                source.aug,
                num_classes=source.num_classes,
                device=device,
            )
            images = rendered.views[:, 0]
            assert rendered.label_targets is not None
            targets = rendered.label_targets[:, 0]
            teachers: dict[str, TopKLogits] = {}
        else:
            stored_keys = [stored.keys[p] for p in block_pos.tolist()]
            for key, stored_key, pos in zip(keys, stored_keys, block_pos.tolist(), strict=True):
                if str(stored_key) != key:
                    raise UserError(
                        f"shard {shard.name} position {pos} holds key {key!r} but the store's "
                        f"row holds {str(stored_key)!r}; the store was built from other shards"
                    )
            check_recorded_labels(
                shard.name, keys, labels, stored.labels[block_pos], stored.valid[block_pos]
            )
            # A sample the dump rendered (valid) must decode now; else replay would render a
            # hole and the digest check would blame the augmentation code, not the image.
            for sample, pos in zip(block, block_pos.tolist(), strict=True):
                if sample.image is None and bool(stored.valid[pos]):
                    raise UserError(
                        f"shard {shard.name}: sample {sample.key!r} cannot be decoded "
                        f"({sample.error}); it decoded when dump-logits stored its views"
                    )
            params = {name: np.asarray(value[block_pos]) for name, value in stored.aug.items()}
            replayed = replay(block, params, source.aug, device)
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
            teachers = {name: topk[rows_t] for name, topk in stored.teachers.items()}
        for i in rows:
            if block[i].image is None:
                # Only store mode had a stage one to compare with (checked above, per row).
                raise UserError(
                    f"shard {shard.name}: sample {keys[i]!r} cannot be decoded ({block[i].error})"
                )
        take = torch.as_tensor(rows, dtype=torch.long)
        yield StreamBlock(
            ordinals=np.array([ordinal_of[block[i].position] for i in rows], dtype=np.int64),
            keys=[keys[i] for i in rows],
            images=images[take].contiguous(),
            labels=torch.as_tensor(labels)[take],
            label_targets=targets[take].float().contiguous(),
            teachers={name: topk[take] for name, topk in teachers.items()},
        )


@dataclass(slots=True)
class ViewSegments:
    """The training segment renderer of the stream: :func:`render_segment` at one view.

    Runs in DataLoader workers, each with its copy of the source's opened store (one at a
    URL reopens its group in a forked worker: :meth:`LogitStore.in_this_process`).
    """

    source: ViewSource
    view: int

    def __call__(
        self, shard: ShardRows, segment: Segment, needed: np.ndarray
    ) -> Iterator[StreamBlock]:
        store = self.source.store.in_this_process() if self.source.store is not None else None
        return render_segment(self.source, store, shard, segment, self.view, needed)


@dataclass(slots=True)
class ViewBatch:
    """One training batch."""

    images: Tensor
    """float32 [B, C, S, S] in [0, 1]."""
    labels: Tensor
    """int64 [B] ground truth of each row's own sample (train-teacher's unmixed target)."""
    label_targets: Tensor
    """float32 [B, num_classes] λ-mixed one-hot targets."""
    teachers: dict[str, TopKLogits]
    """Store mode: per teacher its stored top-k ``[B, k]``; empty in online mode."""
    keys: list[str]


def view_batch(rows: list[tuple[StreamBlock, int]]) -> ViewBatch:
    """Stack one batch from its rows, ``(block, row)`` in batch order."""
    names = rows[0][0].teachers.keys()
    return ViewBatch(
        images=torch.stack([b.images[r] for b, r in rows]),
        labels=torch.stack([b.labels[r] for b, r in rows]),
        label_targets=torch.stack([b.label_targets[r] for b, r in rows]),
        teachers={name: TopKLogits.stack([b.teachers[name][r] for b, r in rows]) for name in names},
        keys=[b.keys[r] for b, r in rows],
    )


def iter_view_batches(
    source: ViewSource,
    shards: Sequence[ShardRows],
    plan: StreamPlan,
    *,
    view: int,
    start_step: int = 0,
    workers: int = 0,
) -> Iterator[ViewBatch]:
    """The plan's batches of ``view`` from ``start_step`` on, identical for any ``workers``."""
    return planned_batches(
        shards, plan, ViewSegments(source, view), view_batch, start_step=start_step, workers=workers
    )


@dataclass(frozen=True)
class ViewStream:
    """One rank's training batches, epoch by epoch: the one planner (shard order, shuffle, equal
    steps per rank, :func:`~..data.planning.plan_training`) over ``shards`` and the view of each
    epoch from ``source``. train-student and the Python API's ``ReplayedViews`` both read
    their batches here, so the two cannot differ."""

    source: ViewSource
    shards: Sequence[ShardRows]
    rank: int
    world_size: int
    batch_size: int
    """Per rank."""
    shuffle_buffer: int
    workers: int
    num_views: int | None = None
    """Epoch ``e`` uses view ``e mod num_views`` (:func:`epoch_view`); None: view ``e`` (fresh
    views that never repeat)."""

    def view(self, epoch: int) -> int:
        """The view index of ``epoch``."""
        return epoch if self.num_views is None else epoch_view(epoch, self.num_views)

    def plan(self, epoch: int) -> StreamPlan:
        """This rank's plan of ``epoch``."""
        return plan_training(
            self.shards,
            seed=self.source.seed,
            epoch=epoch,
            rank=self.rank,
            world_size=self.world_size,
            batch_size=self.batch_size,
            shuffle_buffer=self.shuffle_buffer,
        )

    @property
    def steps_per_epoch(self) -> int:
        """Steps of every epoch (the same each epoch; planning checks the data)."""
        return self.plan(0).steps

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[ViewBatch]:
        """The epoch's batches from ``start_step`` on."""
        return iter_view_batches(
            self.source,
            self.shards,
            self.plan(epoch),
            view=self.view(epoch),
            start_step=start_step,
            workers=self.workers,
        )


@dataclass(frozen=True)
class FreshViews:
    """An epoch's training batches of fresh views for the stages that train on labels with
    live models (train-teacher, train-cakd): a :class:`ViewStream` whose view is keyed by
    ``(seed, view = epoch, key)``, never stored, given as ``(images, labels)``."""

    stream: ViewStream
    """The underlying stream; its ``num_views`` is None (view = epoch, never repeated)."""

    def __post_init__(self) -> None:
        if self.stream.num_views is not None:
            raise ValueError("fresh views never repeat: the stream's num_views must be None")

    def plan(self, epoch: int) -> StreamPlan:
        """This rank's plan of ``epoch``."""
        return self.stream.plan(epoch)

    @property
    def steps_per_epoch(self) -> int:
        """Steps of every epoch (the same each epoch; planning checks the data)."""
        return self.stream.steps_per_epoch

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """The epoch's ``(images, labels)`` batches from ``start_step`` on."""
        return ((b.images, b.labels) for b in self.stream.batches(epoch, start_step))
