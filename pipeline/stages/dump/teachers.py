"""The main-process side of ``dump-logits``: teachers, batched forward passes, per-shard rows.

Rendered views arrive a mix block at a time (possibly interleaving shards when several workers
run). :class:`TeacherRunner` queues them, runs every teacher on full batches of views, and drops
each result into its shard's :class:`ShardAccumulator`; a shard is written once all its rows and
views have their logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ....stores.logit_store import ShardBlock
from ....stores.schema import index_dtype
from ....stores.topk import TopKLogits
from ...augment.blocks import SKIPPED_LABEL, RenderedBlock
from ...augment.config import AugmentConfig
from ...augment.params import param_fields
from ...models.teachers import LoadedTeacher
from ...runtime.errors import UserError
from ...runtime.precision import PrecisionPolicy


class ShardAccumulator:
    """All rows of one shard, filled block by block, turned into one ``ShardBlock``."""

    def __init__(
        self,
        count: int,
        num_views: int,
        topk: int,
        num_classes: int,
        teachers: list[str],
        aug: AugmentConfig,
    ) -> None:
        n, v = count, num_views
        self.count = count
        self.keys: list[str | None] = [None] * n
        self.labels = np.full(n, -1, dtype=np.int32)
        self.view_labels = np.full((n, v), SKIPPED_LABEL, dtype=np.int32)
        self.digests = np.zeros((n, v), dtype=np.uint64)
        self.aug = {
            name: np.zeros((n, v, *shape), dtype=dtype)
            for name, (shape, dtype) in param_fields(aug).items()
        }
        idx = index_dtype(num_classes)
        self.logprobs = {t: np.zeros((n, v, topk), dtype=np.float16) for t in teachers}
        self.indices = {t: np.zeros((n, v, topk), dtype=idx) for t in teachers}
        self.lse = {t: np.zeros((n, v), dtype=np.float32) for t in teachers}
        self.valid = np.ones(n, dtype=bool)

    def add_block(self, block: RenderedBlock) -> None:
        """Record a block's keys, labels and parameters (logits come later via ``add_logits``)."""
        pos = block.positions
        if len(pos) and (pos.min() < 0 or pos.max() >= self.count):
            raise UserError(
                f"shard holds more samples than its index says ({self.count}); "
                "re-run make-shards or delete the stale index.json"
            )
        for i, p in enumerate(pos.tolist()):
            self.keys[p] = block.keys[i]
        self.labels[pos] = block.labels
        self.view_labels[pos] = block.view_labels
        self.digests[pos] = block.digests
        for name, value in block.params.items():
            self.aug[name][pos] = value
        self.valid[pos] = block.valid

    def add_logits(
        self, teacher: str, rows: np.ndarray, views: np.ndarray, top: TopKLogits
    ) -> None:
        """Store one teacher's top-k for the (row, view) pairs given."""
        self.logprobs[teacher][rows, views] = top.logprobs.cpu().numpy()
        self.indices[teacher][rows, views] = top.indices.cpu().numpy()
        self.lse[teacher][rows, views] = top.lse.cpu().numpy()

    def to_block(self) -> ShardBlock:
        """The finished shard in the store's layout."""
        missing = [i for i, k in enumerate(self.keys) if k is None]
        if missing:
            raise UserError(
                f"shard ended after {self.count - len(missing)} of the {self.count} samples its "
                "index lists (truncated tar?)"
            )
        return ShardBlock(
            keys=[str(k) for k in self.keys],
            labels=self.labels,
            view_labels=self.view_labels,
            digests=self.digests,
            aug=self.aug,
            teachers={
                t: TopKLogits(
                    logprobs=torch.from_numpy(self.logprobs[t]),
                    indices=torch.from_numpy(self.indices[t]),
                    lse=torch.from_numpy(self.lse[t]),
                )
                for t in self.logprobs
            },
            valid=self.valid,
        )


@dataclass
class _Segment:
    """Queued views of one shard with the (row, view) each belongs to."""

    images: torch.Tensor
    rows: np.ndarray
    views: np.ndarray


@dataclass
class TeacherRunner:
    """Queue views per shard, run every teacher on full batches, route top-k results back.

    Batches never mix shards: a shard's views are cut into batches in shard order whatever
    else is in flight, so its logits do not depend on worker interleaving, on which shards a
    resumed run still has to write, or on how shards are split over ranks (CPU and GPU kernels
    can round differently at different batch sizes).

    The forwards run under ``policy``'s autocast; the logits are cast to float32 before the
    finiteness check and the top-k, so the stored log-probabilities come from a float32
    ``log_softmax`` at every precision.
    """

    teachers: list[LoadedTeacher]
    topk: int
    batch_size: int
    device: torch.device
    policy: PrecisionPolicy
    shards: dict[str, ShardAccumulator] = field(default_factory=dict)
    _queues: dict[str, list[_Segment]] = field(default_factory=dict)
    _queued: dict[str, int] = field(default_factory=dict)
    views_done: int = 0

    def add(self, shard: str, block: RenderedBlock) -> None:
        """Queue the valid views of ``block`` (shard's accumulator must exist)."""
        self.shards[shard].add_block(block)
        rows_local = np.flatnonzero(block.valid)
        if not len(rows_local):
            return
        v = block.num_views
        flat = block.views[torch.as_tensor(rows_local)].reshape(-1, *block.views.shape[2:])
        rows = np.repeat(block.positions[rows_local], v)
        views = np.tile(np.arange(v), len(rows_local))
        self._queues.setdefault(shard, []).append(_Segment(flat, rows, views))
        self._queued[shard] = self._queued.get(shard, 0) + len(flat)
        while self._queued[shard] >= self.batch_size:
            self._run(shard, self.batch_size)

    def flush(self, shard: str) -> None:
        """Run the teachers on the rest of ``shard``'s queue (the shard has ended)."""
        while self._queued.get(shard, 0):
            self._run(shard, min(self._queued[shard], self.batch_size))
        self._queues.pop(shard, None)
        self._queued.pop(shard, None)

    def _take(self, shard: str, n: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """Pop the first ``n`` queued views of ``shard`` with their rows and view indices."""
        segs = self._queues[shard]
        taken: list[_Segment] = []
        need = n
        while need:
            seg = segs[0]
            take = min(need, len(seg.rows))
            taken.append(_Segment(seg.images[:take], seg.rows[:take], seg.views[:take]))
            if take == len(seg.rows):
                segs.pop(0)
            else:
                segs[0] = _Segment(seg.images[take:], seg.rows[take:], seg.views[take:])
            need -= take
        self._queued[shard] -= n
        if len(taken) == 1:
            return taken[0].images, taken[0].rows, taken[0].views
        return (
            torch.cat([t.images for t in taken]),
            np.concatenate([t.rows for t in taken]),
            np.concatenate([t.views for t in taken]),
        )

    def _check_finite(
        self, teacher: str, shard: str, logits: torch.Tensor, rows: np.ndarray, views: np.ndarray
    ) -> None:
        """``UserError`` naming teacher, shard and the first view whose logits are NaN or
        infinite: such logits have no top-k, and nothing non-finite may reach the store."""
        bad = ~torch.isfinite(logits).all(dim=-1)
        if bool(bad.any()):
            at = int(torch.nonzero(bad)[0, 0])
            key = self.shards[shard].keys[int(rows[at])]
            raise UserError(
                f"teacher {teacher!r} gave non-finite logits (NaN or Inf) on shard {shard}, "
                f"sample {key!r} view {int(views[at])}; nothing of this shard was written"
            )

    @torch.inference_mode()
    def _run(self, shard: str, n: int) -> None:
        batch, rows, view_ids = self._take(shard, n)
        batch = batch.to(self.device, non_blocking=True)
        for teacher in self.teachers:
            with self.policy.autocast():
                logits = teacher.model(batch)
            logits = logits.float()
            self._check_finite(teacher.info.name, shard, logits, rows, view_ids)
            top = TopKLogits.from_logits(logits, self.topk)
            self.shards[shard].add_logits(teacher.info.name, rows, view_ids, top)
        self.views_done += n
