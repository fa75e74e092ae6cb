"""The student's stream: planning is pure and rank-balanced; batches do not depend on workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from civt_pipe.pipeline.augment.config import preset
from civt_pipe.pipeline.data.index import ShardIndex
from civt_pipe.pipeline.data.make_shards import MakeShardsConfig, make_shards
from civt_pipe.pipeline.data.shard_set import resolve_shards
from civt_pipe.pipeline.replay.student_stream import (
    ShardRows,
    ViewSource,
    buffer_shuffle,
    iter_batches,
    plan_epoch,
    shard_order,
    shard_rows_for,
    steps_per_epoch,
)
from civt_pipe.pipeline.runtime.errors import UserError


def _rows(counts: list[int]) -> list[ShardRows]:
    return [
        ShardRows(name=f"s{i}", path=f"/x/s{i}.tar", count=c, valid=np.arange(c, dtype=np.int64))
        for i, c in enumerate(counts)
    ]


def _plan(shards: list[ShardRows], **kw: int):  # type: ignore[no-untyped-def]
    args = dict(seed=3, epoch=0, num_views=2, rank=0, world_size=1, batch_size=8, shuffle_buffer=16)
    args.update(kw)
    return plan_epoch(shards, **args)


def test_buffer_shuffle_is_a_seeded_permutation_with_bounded_lag() -> None:
    a = buffer_shuffle(500, 32, np.random.default_rng(1))
    b = buffer_shuffle(500, 32, np.random.default_rng(1))
    c = buffer_shuffle(500, 32, np.random.default_rng(2))
    assert sorted(a.tolist()) == list(range(500))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # Output j never needs an input later than j + buffer: a streaming consumer can follow it.
    assert all(int(x) <= j + 32 for j, x in enumerate(a))


def test_plan_gives_every_rank_the_same_steps_and_covers_shards_once() -> None:
    shards = _rows([40, 40, 13, 30])
    plans = [_plan(shards, rank=r, world_size=2) for r in range(2)]
    assert steps_per_epoch(123, 2, 8) == 7
    for plan in plans:
        assert plan.steps == 7 and len(plan.order) == 7 * 8
        assert sorted(plan.order.tolist()) == list(range(56))
    # Without cycling, the ranks read disjoint shards that together are all of them.
    firsts = [{s.shard for s in p.segments} for p in plans]
    assert firsts[0].isdisjoint(firsts[1])
    assert firsts[0] | firsts[1] == {0, 1, 2, 3}


def test_plan_cycles_a_short_rank_instead_of_stopping_early() -> None:
    shards = _rows([50, 6])
    plan = _plan(shards, rank=int(np.flatnonzero(shard_order(2, 3, 0) == 1)[0]), world_size=2)
    # 56 samples // (2 × 8) = 3 steps = 24 samples from a 6-sample shard: four passes.
    assert plan.steps == 3
    assert [s.shard for s in plan.segments] == [1, 1, 1, 1]
    assert [s.start for s in plan.segments] == [0, 6, 12, 18]


def test_plan_is_pure_and_changes_with_epoch() -> None:
    shards = _rows([20, 20, 20])
    a, b, c = _plan(shards, epoch=1), _plan(shards, epoch=1), _plan(shards, epoch=2)
    assert np.array_equal(a.order, b.order) and a.view == 1 and c.view == 0
    assert not np.array_equal(a.order, c.order)


def test_plan_rejects_a_batch_larger_than_the_data() -> None:
    with pytest.raises(UserError, match="lower --batch-size"):
        _plan(_rows([5]), batch_size=8)
    with pytest.raises(UserError, match="cannot feed 2 ranks"):
        _plan(_rows([40]), world_size=2)


@pytest.fixture(scope="module")
def digit_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three 24-sample shards of the built-in digits (test split)."""
    root = tmp_path_factory.mktemp("digits")
    make_shards(
        MakeShardsConfig(source="digits", out_dir=root / "all", split="test", shard_size=24)
    )
    index = ShardIndex.load(root / "all")
    small = root / "small"
    small.mkdir()
    names = [s.name for s in index.shards[:3]]
    for name in names:
        (small / name).write_bytes((root / "all" / name).read_bytes())
    index.subset(names).save(small)
    return small


def _online_batches(shards_dir: Path, workers: int, start_step: int = 0) -> list[torch.Tensor]:
    shard_set = resolve_shards(str(shards_dir))
    rows = shard_rows_for(shard_set.paths, [s.num_samples for s in shard_set.index.shards])
    aug = preset("small", 16)
    source = ViewSource(aug=aug, seed=5, num_classes=10, channels=1)
    plan = plan_epoch(
        rows, seed=5, epoch=1, num_views=2, rank=0, world_size=1, batch_size=8, shuffle_buffer=20
    )
    return [
        torch.cat([b.images.flatten(1), b.label_targets], dim=1)
        for b in iter_batches(source, rows, plan, start_step=start_step, workers=workers)
    ]


def test_batches_do_not_depend_on_worker_count(digit_shards: Path) -> None:
    serial = _online_batches(digit_shards, workers=0)
    parallel = _online_batches(digit_shards, workers=2)
    assert len(serial) == 9
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel, strict=True))


def test_resuming_mid_epoch_yields_the_remaining_batches_exactly(digit_shards: Path) -> None:
    full = _online_batches(digit_shards, workers=0)
    rest = _online_batches(digit_shards, workers=0, start_step=4)
    assert len(rest) == len(full) - 4
    assert all(torch.equal(a, b) for a, b in zip(full[4:], rest, strict=True))
