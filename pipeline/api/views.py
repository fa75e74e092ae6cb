"""``civt_pipe.ReplayedViews``: a store's training batches, exactly as train-student sees them.

The store is bound to its shards by the same checks (:func:`..replay.binding.bind_store`) and
the batches come from the same stream (:class:`..replay.segments.ViewStream`) that
``train-student`` reads, so for the same settings the images, targets and top-k logits are
bit-identical to the command's.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..data.shard_set import resolve_complete_shards
from ..replay.binding import bind_store
from ..replay.segments import ViewBatch, ViewStream
from ..runtime.distributed import current_context
from ..runtime.errors import UserError
from .store import Store

SHUFFLE_BUFFER = 512
"""train-student's ``--shuffle-buffer`` default."""


class ReplayedViews(IterableDataset[ViewBatch]):
    """One epoch of a store's replayed training views, batch by batch, for this rank.

    Each item is a :class:`~..replay.segments.ViewBatch`: ``images`` float32 ``[B, C, S, S]``
    in [0, 1] (not normalized), ``labels`` int64 ``[B]`` (each row's own label),
    ``label_targets`` float32 ``[B, num_classes]`` (the λ-mix of both labels of a mixed view, a
    one-hot otherwise), ``teachers`` ``{name: TopKLogits [B, k]}`` (the stored top-k of each
    teacher for exactly that view) and ``keys`` (each row's sample key). Every batch is full;
    an epoch has :attr:`steps_per_epoch` of them, the same on every rank.

    Epoch ``e`` replays stored view ``e mod V``; call :meth:`set_epoch` before each epoch (as
    with ``DistributedSampler``), or iterate :meth:`batches` with the epoch. Iterate it
    directly, or wrap it as ``DataLoader(views, batch_size=None)``: it decodes and renders in
    ``workers`` processes of its own, so the wrapping loader needs no workers.

    Args:
        shards: the shards the store was dumped from (a directory with ``index.json``, a
            pattern, or a URL): ``train-student --data``.
        store: the store (a path or URL, or an :class:`~.store.Store`): ``--store``.
        batch_size: images per step and rank: ``--batch-size``.
        epoch: the epoch the first iteration replays (see :meth:`set_epoch`).
        rank, world_size: this process's share; None: torch.distributed's when initialized,
            else torchrun's ``RANK``/``WORLD_SIZE``, else one process.
        views: replay only the store's first ``views`` views: ``--store-views``.
        topk: keep only the first ``topk`` stored entries: ``--store-topk``.
        teachers: these teachers of the store only, in the store's order:
            ``--store-teacher``.
        decoder: ``auto`` (the store's) or the decoder the store records: ``--decoder``.
        shuffle_buffer: ``--shuffle-buffer``.
        workers: processes that decode and render: ``--workers``.
        verify: check replayed views against the stored digests: ``all``, ``sample`` (the
            first block of each segment) or ``off``: ``--verify-replay``.
        device: where a store dumped with the ``nvjpeg`` decoder is decoded (CUDA only); the
            batches are on the CPU otherwise.

    Raises:
        UserError, StoreError: one line for every mismatch of store and shards, or of the
            settings and the store, before anything is read.
    """

    def __init__(
        self,
        shards: str | os.PathLike[str],
        store: str | os.PathLike[str] | Store,
        *,
        batch_size: int,
        epoch: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        views: int | None = None,
        topk: int | None = None,
        teachers: Sequence[str] | None = None,
        decoder: str = "auto",
        shuffle_buffer: int = SHUFFLE_BUFFER,
        workers: int = 0,
        verify: str = "sample",
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        here = current_context()
        rank = here.rank if rank is None else rank
        world_size = here.world_size if world_size is None else world_size
        if world_size < 1 or not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is not in a world of {world_size} process(es)")
        if epoch < 0:
            raise UserError(f"epoch must be 0 or more, got {epoch}")
        if shuffle_buffer < 1:
            raise UserError(f"shuffle_buffer must be at least 1, got {shuffle_buffer}")
        data = os.fspath(shards)
        binding = bind_store(
            store.path if isinstance(store, Store) else os.fspath(store),
            data,
            resolve_complete_shards(data),
            views=views,
            topk=topk,
            teachers=tuple(teachers or ()),
            decoder=decoder,
            device_type=torch.device(device).type,
            workers=workers,
        )
        self._stream = ViewStream(
            binding.view_source(verify),
            binding.shards,
            rank=rank,
            world_size=world_size,
            batch_size=batch_size,
            shuffle_buffer=shuffle_buffer,
            workers=workers,
            num_views=binding.num_views,
        )
        self.epoch = epoch
        """The epoch that iterating replays."""
        self.steps_per_epoch = self._stream.steps_per_epoch  # plans once: refusals come now
        """Batches per epoch and rank."""
        self.rank = rank
        self.world_size = world_size
        self.batch_size = batch_size
        self.workers = workers
        self.num_views = binding.num_views
        """The views replayed (the store's V, or ``views``)."""
        self.num_classes = binding.num_classes
        self.class_names = list(binding.class_names)
        self.teachers = list(binding.teacher_names)
        """The teachers whose top-k each batch carries, in the store's order."""
        self.channels = binding.channels
        self.image_size = binding.aug.image_size
        self.mean = list(binding.mean)
        """Per-channel mean of the shards' images (what civt-pipe's models normalize with)."""
        self.std = list(binding.std)
        """Per-channel standard deviation of the shards' images."""
        self.seed = binding.seed
        """The store's seed: the views and the data order are functions of it."""

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration replay ``epoch`` (view ``epoch mod num_views``)."""
        if epoch < 0:
            raise UserError(f"epoch must be 0 or more, got {epoch}")
        self.epoch = epoch

    @property
    def view(self) -> int:
        """The stored view the current epoch replays."""
        return self._stream.view(self.epoch)

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[ViewBatch]:
        """The batches of ``epoch`` from step ``start_step`` on (a resumed run skips what it
        consumed; nothing before is read)."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise UserError(f"start_step must be in [0, {self.steps_per_epoch}], got {start_step}")
        return self._stream.batches(epoch, start_step)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __iter__(self) -> Iterator[ViewBatch]:
        worker = get_worker_info()
        if worker is not None and (worker.num_workers > 1 or self.workers > 0):
            # Several loader workers would each yield the whole epoch; a worker cannot start
            # processes of its own.
            raise UserError(
                "ReplayedViews yields whole batches and renders in its own processes: wrap it "
                "as DataLoader(views, batch_size=None) without num_workers and give "
                "ReplayedViews(..., workers=N) instead"
            )
        return self.batches(self.epoch)
