"""A killed writer leaves exactly its shards missing; resuming gives the same bytes; two
processes writing disjoint shards at once lose nothing."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest
from store_helpers import SHARDS, make_block, make_spec, tree_bytes, write_all, write_shards_worker

from civt_pipe.stores.logit_store import LogitStore

NAMES = [n for n, _ in SHARDS]


def _uninterrupted(path: Path) -> dict[str, bytes]:
    spec = make_spec()
    store = LogitStore.create(path, spec)
    write_all(store, spec)
    store.finalize()
    return tree_bytes(path)


class _Killed(Exception):
    pass


def test_killed_writer_reports_missing_shards_and_resume_gives_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec()
    path = tmp_path / "s.zarr"
    store = LogitStore.create(path, spec)
    store.write_shard(NAMES[0], make_block(spec, NAMES[0]))
    # Shard 2: its data lands but the writer dies before setting the flag. The block holds
    # other numbers than the real one, as a half-finished write would.
    wrong = make_block(spec, NAMES[2])
    wrong.digests = wrong.digests + np.uint64(1)
    wrong.aug["crop"] = wrong.aug["crop"] + 1
    original = LogitStore._padded_block

    def die_after_data(self: LogitStore, layout, block):  # type: ignore[no-untyped-def]
        return _RaiseOnFlag(original(self, layout, block))

    monkeypatch.setattr(LogitStore, "_padded_block", die_after_data)
    with pytest.raises(_Killed):
        store.write_shard(NAMES[2], wrong)
    monkeypatch.undo()

    reopened = LogitStore.open(path, "r+")
    # The dead writer's data is on disk, only its flag is missing.
    offset = reopened.shard(NAMES[2]).row_offset
    assert reopened.array("digests")[offset, 0] == wrong.digests[0, 0]
    assert reopened.missing_shards() == [NAMES[1], NAMES[2]]
    assert not reopened.is_complete()
    write_all(reopened, spec, reopened.missing_shards())
    assert reopened.is_complete()
    reopened.finalize()
    assert tree_bytes(path) == _uninterrupted(tmp_path / "ref.zarr")


class _RaiseOnFlag(dict):  # type: ignore[type-arg]
    """The block's arrays; iterating them writes every array, then the writer 'dies'."""

    def items(self):  # type: ignore[no-untyped-def]
        yield from super().items()
        raise _Killed


def test_resume_after_some_shards_only_matches_uninterrupted_bytes(tmp_path: Path) -> None:
    spec = make_spec()
    path = tmp_path / "s.zarr"
    write_all(LogitStore.create(path, spec), spec, [NAMES[2]])
    store = LogitStore.open(path, "r+")
    assert store.missing_shards() == [NAMES[0], NAMES[1]]
    write_all(store, spec, store.missing_shards())
    store.finalize()
    assert tree_bytes(path) == _uninterrupted(tmp_path / "ref.zarr")


@pytest.mark.slow
def test_two_processes_writing_disjoint_shards_lose_nothing(tmp_path: Path) -> None:
    spec = make_spec()
    path = tmp_path / "s.zarr"
    LogitStore.create(path, spec)
    ctx = multiprocessing.get_context("spawn")
    workers = [
        ctx.Process(target=write_shards_worker, args=(str(path), [NAMES[0], NAMES[2]])),
        ctx.Process(target=write_shards_worker, args=(str(path), [NAMES[1]])),
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
        assert w.exitcode == 0
    store = LogitStore.open(path, "r+")
    assert store.missing_shards() == []
    for name in NAMES:
        got = store.read_shard(name)
        want = make_block(spec, name)
        assert got.keys == want.keys
        np.testing.assert_array_equal(got.digests, want.digests)
        np.testing.assert_array_equal(
            got.teachers["cnn"].logprobs.numpy(), want.teachers["cnn"].logprobs.numpy()
        )
    store.finalize()
    assert tree_bytes(path) == _uninterrupted(tmp_path / "ref.zarr")
