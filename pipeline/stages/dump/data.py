"""The dump's segment renderer: every view of every mix block of a shard, for the teachers.

``dump-logits`` reads its shards through the one stream (:mod:`...data.streams`) with a pass
plan: whole shards, rank ``r`` takes ``missing[r::W]``, worker ``w`` renders segments
``j ≡ w mod W``, and each segment is one shard read in order. :class:`ShardViews` renders one
such segment as :class:`DumpBlock` items; the teachers run in the main process on whatever
arrives, so decoding and augmentation overlap the forward passes. Block contents never depend
on the worker that rendered them: views are keyed by (seed, view, key).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ...augment.blocks import RenderedBlock, iter_blocks, sample_and_render
from ...augment.config import AugmentConfig
from ...data.imageio import Decoder, OnError
from ...data.index import ShardIndex
from ...data.planning import Segment, ShardRows
from ...data.reader import iter_shard


@dataclass(frozen=True, slots=True)
class DumpBlock:
    """One rendered mix block of shard ``shard``, every view of every row."""

    shard: str
    ordinals: np.ndarray
    """int64 [n] stream ordinals of the rows (the dump consumes blocks as they arrive)."""
    block: RenderedBlock


@dataclass(frozen=True, slots=True)
class ShardViews:
    """Render all ``num_views`` views of every sample of a shard (a whole-shard segment).

    Samples that do not decode follow ``on_error``; with ``index`` given, each shard's count and
    keys are checked against its index entry while it is read.
    """

    channels: int
    seed: int
    num_views: int
    aug: AugmentConfig
    on_error: OnError
    index: ShardIndex | None = None
    decoder: Decoder = "torchvision"
    render_device: str = "cpu"
    """Where views are rendered (``cpu``, or ``cuda:N`` in the main process, --workers 0)."""

    def __call__(
        self, shard: ShardRows, segment: Segment, needed: np.ndarray
    ) -> Iterator[DumpBlock]:
        expected = self.index.shard(shard.name) if self.index is not None else None
        device = torch.device(self.render_device)
        samples = iter_shard(
            shard.path,
            channels=self.channels,
            on_error=self.on_error,
            expected=expected,
            decoder=self.decoder,
            keep_on_device=device.type == "cuda",
        )
        for block in iter_blocks(samples, self.aug.mix_block):
            rendered = sample_and_render(
                block, self.seed, range(self.num_views), shard.count, self.aug, device=device
            )
            yield DumpBlock(shard.name, segment.start + rendered.positions, rendered)
