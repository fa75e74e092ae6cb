"""The one stream: a planned ``IterableDataset`` whose workers render whole segments.

Every stage reads its shards through :class:`PlannedStream`: a :class:`~.planning.StreamPlan`
(who reads what, :mod:`.planning`) plus a per-stage *segment renderer* — a picklable callable
``render(shard, segment, needed) -> Iterator[block]`` that decodes one segment's shard and
yields blocks of rendered samples tagged with their ordinals (train-student: replayed or fresh
views; train-teacher: fresh unmixed views; the dump: every view of every mix block;
evaluation: :class:`EvalViews`). DataLoader worker ``w`` of ``W`` renders segments ``j ≡ w mod W``
and, after each, says :class:`SegmentDone`; a user error inside a worker travels as a
:class:`WorkerError` item, so the main process can raise it as one clean line.

The main process then either re-orders blocks into the planned batches
(:func:`iter_planned_batches`, training: batches independent of the worker count, resumable at
any step), or takes blocks as they arrive (a pass: the dump writes by shard, evaluation sums
counts, and neither needs to hold more than the blocks in flight).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..runtime.errors import USER_ERRORS, UserError
from .imageio import Decoder
from .index import ShardIndex
from .planning import Segment, ShardRows, StreamPlan, plan_pass, shard_rows_for, worker_segments
from .zoo_eval import ZooEval

_Block = TypeVar("_Block", bound="OrdinalBlock")
_Batch = TypeVar("_Batch")
_Block_co = TypeVar("_Block_co", covariant=True)

EVAL_BLOCK_ROWS = 64
"""Samples per evaluation block sent from a worker (small: bounded memory, few messages)."""


class OrdinalBlock(Protocol):
    """What a renderer yields for planned batching: rows tagged with their stream ordinals."""

    @property
    def ordinals(self) -> np.ndarray:
        """int64 ``[n]`` ordinal of every row."""
        ...


class SegmentRenderer(Protocol[_Block_co]):
    """A stage's rendering of one segment; runs in a DataLoader worker, so it must pickle."""

    def __call__(
        self, shard: ShardRows, segment: Segment, needed: np.ndarray
    ) -> Iterator[_Block_co]:
        """Yield blocks of the segment's positions whose ``needed`` flag (one each) is set."""
        ...


@dataclass(frozen=True, slots=True)
class SegmentDone:
    """A worker finished segment ``segment`` (of shard ``shard``): every block of it was sent."""

    segment: int
    shard: str


@dataclass(frozen=True, slots=True)
class WorkerError:
    """A user error inside a worker, carried to the main process as data.

    DataLoader re-raises worker exceptions with the worker's traceback glued into the message,
    which would break the one-line error contract; so user errors travel as items instead.
    """

    message: str


class PlannedStream(IterableDataset):  # type: ignore[type-arg]
    """The blocks of a plan's segments, each segment rendered whole by one worker, in order.

    Args:
        shards: the shard list the plan indexes.
        plan: this rank's plan.
        render: the stage's segment renderer.
        needed: bool per ordinal; segments with nothing needed are not read (resume). None:
            everything.
    """

    def __init__(
        self,
        shards: Sequence[ShardRows],
        plan: StreamPlan,
        render: SegmentRenderer[Any],
        needed: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.shards = list(shards)
        self.plan = plan
        self.render = render
        self.needed = np.ones(len(plan.order), dtype=bool) if needed is None else needed

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for j in worker_segments(len(self.plan.segments), worker, workers):
            segment = self.plan.segments[j]
            shard = self.shards[segment.shard]
            needed = self.needed[segment.start : segment.start + len(segment.positions)]
            if len(needed) and not needed.any():
                continue  # consumed before a resume: not even read
            try:
                yield from self.render(shard, segment, needed)
            except USER_ERRORS as err:
                yield WorkerError(str(err))
                return
            yield SegmentDone(segment=j, shard=shard.name)


def pass_through(item: Any) -> Any:
    """The collate function: workers send whole blocks already; keep them as they are.

    (With ``batch_size=None`` the loader calls it on single items, not lists.)
    """
    return item


def make_loader(
    dataset: PlannedStream, *, workers: int, pin_memory: bool = False
) -> DataLoader[Any]:
    """A loader over ``dataset`` with ``workers`` processes (0: render in the main process).

    Two blocks in flight per worker keep the consumer fed without holding many views. Each
    worker runs torch single-threaded (DataLoader's default), so workers do not oversubscribe
    the cores the main process computes on.
    """
    if workers < 0:
        raise UserError(f"--workers must be 0 or more, got {workers}")
    return DataLoader(
        dataset,
        batch_size=None,
        collate_fn=pass_through,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=2 if workers > 0 else None,
        persistent_workers=False,
    )


_Item = TypeVar("_Item")
_END = object()


def read_ahead(items: Iterable[_Item], depth: int = 2) -> Iterator[_Item]:
    """``items`` iterated on a background thread, up to ``depth`` items ahead of the consumer.

    For a loader without worker processes (``--workers 0``): the next blocks are decoded and
    rendered while the main thread computes on this one (torch's ops release the GIL), in the
    same order, so nothing downstream changes. An error of the producer is raised in the
    consumer at the item where it happened; a consumer that stops early stops the producer.
    """
    import queue
    import threading

    box: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                box.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
        except BaseException as err:  # handed to the consumer, raised there
            put((_END, err))
            return
        put((_END, None))

    thread = threading.Thread(target=produce, name="civt-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, error = box.get()
            if item is _END:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        thread.join()


def needed_from(plan: StreamPlan, start_step: int) -> np.ndarray:
    """bool per ordinal: the ordinals of batches ``start_step`` onwards."""
    needed = np.zeros(len(plan.order), dtype=bool)
    needed[plan.order[start_step * plan.batch_size :]] = True
    return needed


def iter_planned_batches(
    items: Iterable[Any],
    plan: StreamPlan,
    assemble: Callable[[list[tuple[_Block, int]]], _Batch],
    *,
    start_step: int = 0,
) -> Iterator[_Batch]:
    """Re-order arriving blocks into the plan's batches ``start_step..steps-1``.

    Rows are kept by ordinal until their batch is due, so the arrival order (how many workers,
    who finished first) changes memory use, never a batch. ``assemble`` builds one batch from
    its rows as ``(block, row index)`` pairs in batch order.
    """
    source = iter(items)
    pending: dict[int, tuple[_Block, int]] = {}

    def pull(ordinal: int) -> tuple[_Block, int]:
        while ordinal not in pending:
            try:
                item = next(source)
            except StopIteration:
                raise RuntimeError(f"the stream ended before ordinal {ordinal}") from None
            if isinstance(item, WorkerError):
                raise UserError(item.message)
            if isinstance(item, SegmentDone):
                continue
            for row, o in enumerate(item.ordinals.tolist()):
                pending[o] = (item, row)
        return pending.pop(ordinal)

    for step in range(start_step, plan.steps):
        yield assemble([pull(int(o)) for o in plan.batch_ordinals(step)])


def planned_batches(
    shards: Sequence[ShardRows],
    plan: StreamPlan,
    render: SegmentRenderer[_Block],
    assemble: Callable[[list[tuple[_Block, int]]], _Batch],
    *,
    start_step: int = 0,
    workers: int = 0,
) -> Iterator[_Batch]:
    """The plan's batches from ``start_step`` on, identical for any number of ``workers``
    (with none, the blocks are rendered ahead on a thread while the caller trains)."""
    dataset = PlannedStream(shards, plan, render, needed_from(plan, start_step))
    loader = make_loader(dataset, workers=workers)
    blocks = loader if workers else read_ahead(loader)
    return iter_planned_batches(blocks, plan, assemble, start_step=start_step)


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


# ------------------------------------------------------------------------------ evaluation


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


@dataclass(frozen=True, slots=True)
class EvalViews:
    """The evaluation segment renderer: center-cropped views, :data:`EVAL_BLOCK_ROWS` at a time."""

    image_size: int
    channels: int
    decoder: Decoder = "torchvision"
    zoo: ZooEval | None = None
    """A zoo model's own evaluation view instead of ours (``evaluate --preprocess zoo``)."""
    render_device: str = "cpu"
    """Where the views are made (``cpu``, or ``cuda:N`` in the main process)."""

    def __call__(
        self, shard: ShardRows, segment: Segment, needed: np.ndarray
    ) -> Iterator[EvalBatch]:
        from .eval_view import eval_view
        from .reader import iter_shard

        wanted = set(segment.positions[needed].tolist())
        rows: list[tuple[torch.Tensor, int, int]] = []
        device = torch.device(self.render_device)
        samples = iter_shard(
            shard.path,
            channels=self.channels,
            decoder=self.decoder,
            keep_on_device=device.type == "cuda",
        )
        for sample in samples:
            if sample.position not in wanted:
                continue
            assert sample.image is not None  # on_error="fail" raises instead
            view = (
                self.zoo(sample.image)
                if self.zoo
                else eval_view(sample.image, self.image_size, device=device)
            )
            rows.append((view, sample.label, sample.position))
            if len(rows) == EVAL_BLOCK_ROWS:
                yield _eval_block(rows, segment.shard)
                rows = []
        if rows:
            yield _eval_block(rows, segment.shard)


def _eval_block(rows: list[tuple[torch.Tensor, int, int]], shard: int) -> EvalBatch:
    return EvalBatch(
        images=torch.stack([r[0] for r in rows]),
        labels=torch.tensor([r[1] for r in rows], dtype=torch.int64),
        shards=torch.full((len(rows),), shard, dtype=torch.int64),
        positions=torch.tensor([r[2] for r in rows], dtype=torch.int64),
    )


def eval_batches(
    shard_set: Any,
    *,
    image_size: int,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    workers: int = 0,
    decoder: Decoder = "torchvision",
    zoo: ZooEval | None = None,
    render_device: str = "cpu",
) -> Iterator[EvalBatch]:
    """Every sample of ``shard_set`` once over all ranks (a pass), as :class:`EvalBatch`
    (views by :func:`.eval_view.eval_view`, or ``zoo``'s own when given).

    Blocks are batched as they arrive — accuracy is a sum, so the order does not matter and
    memory stays at the blocks in flight; the last batch may be short, and a rank without
    shards (fewer shards than ranks) yields nothing.
    """
    index: ShardIndex = shard_set.index
    shards = shard_rows_for(shard_set.paths, [s.num_samples for s in index.shards])
    plan = plan_pass(shards, rank=rank, world_size=world_size, batch_size=batch_size)
    views = EvalViews(image_size, index.channels, decoder, zoo=zoo, render_device=render_device)
    dataset = PlannedStream(shards, plan, views)
    held: list[EvalBatch] = []
    count = 0
    for item in make_loader(dataset, workers=workers):
        if isinstance(item, WorkerError):
            raise UserError(item.message)
        if isinstance(item, SegmentDone):
            continue
        held.append(item)
        count += len(item.labels)
        while count >= batch_size:
            batch, held = _split(_concat(held), batch_size)
            count -= batch_size
            yield batch
    if count:
        yield _concat(held)


def _concat(parts: list[EvalBatch]) -> EvalBatch:
    if len(parts) == 1:
        return parts[0]
    return EvalBatch(*(torch.cat(field) for field in zip(*parts, strict=True)))


def _split(batch: EvalBatch, n: int) -> tuple[EvalBatch, list[EvalBatch]]:
    head = EvalBatch(*(t[:n] for t in batch))
    rest = EvalBatch(*(t[n:] for t in batch))
    return head, ([rest] if len(rest.labels) else [])
