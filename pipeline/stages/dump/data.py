"""The DataLoader side of ``dump-logits``: decode and augment in worker processes.

Each worker takes whole shards (``assign_shards`` over the loader's workers), reads them in order
and yields one :class:`DumpItem` per mix block with all V views rendered. The teachers run in the
main process on whatever arrives, so decoding and augmentation overlap the forward passes. Block
contents never depend on the worker that rendered them: views are keyed by (seed, view, key).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ...augment.blocks import RenderedBlock, iter_blocks, sample_and_render
from ...augment.config import AugmentConfig
from ...data.index import ShardIndex
from ...data.reader import assign_shards, iter_shard
from ...runtime.errors import UserError


@dataclass(frozen=True, slots=True)
class ShardJob:
    """One shard to dump: where it is and how many samples the store expects."""

    name: str
    path: Path
    count: int


@dataclass(slots=True)
class DumpItem:
    """What a worker sends: a rendered block, the end of a shard, or a user error to re-raise.

    Errors travel as data because DataLoader re-raises worker exceptions with the worker's
    traceback glued into the message, which would break the one-line error contract.
    """

    shard: str
    block: RenderedBlock | None = None
    end_of_shard: int | None = None
    """Set on the last item of a shard: how many samples the worker read from it."""
    error: str | None = None


class RenderedBlocks(IterableDataset[DumpItem]):
    """Iterable over the mix blocks of ``jobs``, split by whole shards over loader workers."""

    def __init__(
        self,
        jobs: Sequence[ShardJob],
        *,
        channels: int,
        seed: int,
        num_views: int,
        aug: AugmentConfig,
        on_error: Literal["fail", "skip"],
        index: ShardIndex | None = None,
    ) -> None:
        super().__init__()
        self.jobs = list(jobs)
        self.channels = channels
        self.seed = seed
        self.num_views = num_views
        self.aug = aug
        self.on_error = on_error
        self.index = index

    def _my_jobs(self) -> list[ShardJob]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        # The rank split happened already (the main process got its shards); here only workers.
        names = assign_shards([j.name for j in self.jobs], 0, 1, worker, workers)
        by_name = {j.name: j for j in self.jobs}
        return [by_name[n] for n in names]

    def __iter__(self) -> Iterator[DumpItem]:
        for job in self._my_jobs():
            read = 0
            try:
                expected = self.index.shard(job.name) if self.index is not None else None
                samples = iter_shard(
                    job.path, channels=self.channels, on_error=self.on_error, expected=expected
                )
                for block in iter_blocks(samples, self.aug.mix_block):
                    read += len(block)
                    rendered = sample_and_render(
                        block, self.seed, range(self.num_views), job.count, self.aug
                    )
                    yield DumpItem(shard=job.name, block=rendered)
            except UserError as err:
                yield DumpItem(shard=job.name, error=str(err))
                return
            yield DumpItem(shard=job.name, end_of_shard=read)


def _keep(item: Any) -> Any:
    """Collate function: items are already whole blocks; pass them through untouched.

    (With ``batch_size=None`` the loader calls it on single items, not lists.)
    """
    return item


def make_loader(
    dataset: RenderedBlocks, *, workers: int, pin_memory: bool = False
) -> DataLoader[DumpItem]:
    """A loader over ``dataset`` with ``workers`` processes (0: render in the main process).

    Two blocks in flight per worker keep the teachers fed without holding many views in memory.
    """
    kwargs: dict[str, object] = {}
    if workers > 0:
        kwargs = {"prefetch_factor": 2, "persistent_workers": False}
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        collate_fn=_keep,
        pin_memory=pin_memory,
        **kwargs,  # type: ignore[arg-type]
    )
