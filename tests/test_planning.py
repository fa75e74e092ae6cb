"""The one stream planner: pure, rank-balanced, worker-free, one rule for few shards."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from civt_pipe.pipeline.data.planning import (
    ShardRows,
    StreamPlan,
    buffer_shuffle,
    plan_pass,
    plan_training,
    rank_shards,
    shard_order,
    steps_per_epoch,
    worker_segments,
)
from civt_pipe.pipeline.runtime.errors import UserError


def _rows(counts: list[int], *, skip: dict[int, list[int]] | None = None) -> list[ShardRows]:
    skip = skip or {}
    return [
        ShardRows(
            name=f"s{i}",
            path=f"/x/s{i}.tar",
            count=c,
            valid=np.array([p for p in range(c) if p not in skip.get(i, [])], dtype=np.int64),
        )
        for i, c in enumerate(counts)
    ]


def _train(shards: list[ShardRows], **kw: int) -> StreamPlan:
    args = dict(seed=3, epoch=0, rank=0, world_size=1, batch_size=8, shuffle_buffer=16)
    args.update(kw)
    return plan_training(shards, **args)


def _rows_of(plan: StreamPlan, shards: list[ShardRows]) -> list[tuple[int, int]]:
    """(shard, position) of every ordinal, in ordinal order."""
    return [(s.shard, int(p)) for s in plan.segments for p in s.positions]


def test_buffer_shuffle_is_a_seeded_permutation_with_bounded_lag() -> None:
    a = buffer_shuffle(500, 32, np.random.default_rng(1))
    b = buffer_shuffle(500, 32, np.random.default_rng(1))
    c = buffer_shuffle(500, 32, np.random.default_rng(2))
    assert sorted(a.tolist()) == list(range(500))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # Output j never needs an input later than j + buffer: a streaming consumer can follow it.
    assert all(int(x) <= j + 32 for j, x in enumerate(a))
    assert buffer_shuffle(20, 1, np.random.default_rng(1)).tolist() == list(range(20))
    assert len(buffer_shuffle(0, 8, np.random.default_rng(1))) == 0


def test_shard_order_depends_on_seed_and_epoch_only() -> None:
    a = shard_order(20, 1, 0)
    assert np.array_equal(a, shard_order(20, 1, 0))
    assert not np.array_equal(a, shard_order(20, 1, 1))
    assert not np.array_equal(a, shard_order(20, 2, 0))
    assert sorted(a.tolist()) == list(range(20))


@pytest.mark.parametrize(("rank", "worker"), [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_rank_and_worker_split_is_webdataset_split_by_node_then_worker(
    monkeypatch: pytest.MonkeyPatch, rank: int, worker: int
) -> None:
    import webdataset as wds

    names = [f"s{i}" for i in range(7)]
    for var, value in (("RANK", rank), ("WORLD_SIZE", 2), ("WORKER", worker), ("NUM_WORKERS", 2)):
        monkeypatch.setenv(var, str(value))
    expected = list(wds.split_by_worker(wds.split_by_node(iter(names))))
    mine = [names[i] for i in rank_shards(range(7), rank, 2)]
    assert [mine[j] for j in worker_segments(len(mine), worker, 2)] == expected
    with pytest.raises(ValueError):
        rank_shards(range(7), 2, 2)
    with pytest.raises(ValueError):
        worker_segments(3, 1, 1)


def test_training_gives_every_rank_the_same_steps_over_disjoint_shards() -> None:
    shards = _rows([40, 40, 13, 30])
    plans = [_train(shards, rank=r, world_size=2) for r in range(2)]
    assert steps_per_epoch(123, 2, 8) == 7
    for plan in plans:
        assert plan.steps == 7 and len(plan.order) == 7 * 8
        assert sorted(plan.order.tolist()) == list(range(56))
        assert all(len(plan.batch_ordinals(s)) == 8 for s in range(plan.steps))
    firsts = [{s.shard for s in p.segments} for p in plans]
    assert firsts[0].isdisjoint(firsts[1]) and firsts[0] | firsts[1] == {0, 1, 2, 3}
    # One rank, one epoch: no sample twice.
    rows = _rows_of(plans[0], shards)
    assert len(set(rows)) == len(rows)


def test_training_cycles_a_short_rank_instead_of_stopping_early() -> None:
    shards = _rows([50, 6])
    rank = int(np.flatnonzero(shard_order(2, 3, 0) == 1)[0])
    plan = _train(shards, rank=rank, world_size=2)
    # 56 samples // (2 × 8) = 3 steps = 24 samples from a 6-sample shard: four passes.
    assert plan.steps == 3
    assert [s.shard for s in plan.segments] == [1, 1, 1, 1]
    assert [s.start for s in plan.segments] == [0, 6, 12, 18]


def test_training_reads_only_valid_positions() -> None:
    shards = _rows([10, 10], skip={0: [1, 2], 1: [9]})
    plan = _train(shards, batch_size=5, shuffle_buffer=1)
    assert plan.order.tolist() == list(range(15))  # buffer 1 keeps the order
    rows = _rows_of(plan, shards)
    assert (0, 1) not in rows and (0, 2) not in rows and (1, 9) not in rows


def test_training_plan_is_pure_and_changes_with_epoch_and_rank() -> None:
    shards = _rows([20, 20, 20, 20])
    a, b, c = _train(shards, epoch=1), _train(shards, epoch=1), _train(shards, epoch=2)
    assert np.array_equal(a.order, b.order) and not np.array_equal(a.order, c.order)
    r0, r1 = (_train(shards, world_size=2, rank=r) for r in range(2))
    assert not np.array_equal(r0.order, r1.order)


def test_training_refuses_too_little_data_and_fewer_shards_than_ranks() -> None:
    with pytest.raises(UserError, match="lower --batch-size"):
        _train(_rows([5]), batch_size=8)
    with pytest.raises(UserError, match="cannot feed 2 ranks"):
        _train(_rows([40]), world_size=2)
    with pytest.raises(UserError, match="without usable samples"):
        _train(_rows([0, 40]), world_size=2, rank=int(np.flatnonzero(shard_order(2, 3, 0) == 0)[0]))


@pytest.mark.parametrize(("counts", "world"), [([5, 7, 3, 9], 2), ([5, 7, 3], 4), ([10], 3)])
def test_a_pass_covers_every_valid_sample_once_over_ranks(counts: list[int], world: int) -> None:
    shards = _rows(counts, skip={0: [0]})
    seen: Counter[tuple[int, int]] = Counter()
    for rank in range(world):
        plan = plan_pass(shards, rank=rank, world_size=world, batch_size=4)
        assert plan.order.tolist() == list(range(len(plan.order)))  # no shuffle
        assert [s.shard for s in plan.segments] == list(range(len(counts)))[rank::world]
        seen.update(_rows_of(plan, shards))
        if len(plan.order):
            assert len(plan.batch_ordinals(plan.steps - 1)) == (len(plan.order) - 1) % 4 + 1
    assert seen == Counter(
        (s, p) for s, n in enumerate(counts) for p in range(n) if (s, p) != (0, 0)
    )
    # Fewer shards than ranks: the ranks past the shards get an empty plan (not an error).
    if len(counts) < world:
        empty = plan_pass(shards, rank=world - 1, world_size=world, batch_size=4)
        assert empty.segments == () and empty.steps == 0
