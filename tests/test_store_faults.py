"""Damaged, locked and poisoned stores: nothing trains on them, every refusal is one line.

One real ``dump-logits`` store (toy shards, two untrained nano teachers) is copied and damaged per
case: an array deleted, a chunk deleted, bytes flipped in each kind of array. ``inspect-store
--verify`` and ``train-student`` must both refuse, naming the array (and the chunk). Then the
writer lock (live holder refused, a dead one's lock taken over, released on errors), NaN teacher
logits, and ``--overwrite`` that deletes nothing before every check passed.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import zarr
from store_helpers import make_block, make_spec
from toy_shards import make_toy_shards
from typer.testing import CliRunner

from civt_pipe.cli.app import app
from civt_pipe.pipeline.models.checkpoint import make_checkpoint, save_checkpoint
from civt_pipe.pipeline.models.factory import create_model
from civt_pipe.stores.errors import StoreDamagedError, StoreError
from civt_pipe.stores.inspect import inspect_store, verify_store
from civt_pipe.stores.lock import WriterLock, lock_path
from civt_pipe.stores.logit_store import LogitStore
from civt_pipe.stores.topk import TopKLogits

FIRST = "test-000000.tar"
FIRST_HELPER = make_spec().shards[0][0]


def _teacher(path: Path, seed: int, *, poison: bool = False) -> Path:
    torch.manual_seed(seed)
    model = create_model("cnn-nano", num_classes=3, in_chans=1, image_size=8)
    if poison:
        # Finite but huge weights: the logits overflow float32 to inf/NaN on every input.
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(3e30)
    save_checkpoint(path, make_checkpoint(model))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("faults")
    data = make_toy_shards(root, "test")  # 48 samples, 3 shards, 3 classes, 8 px
    teachers = [f"cnn=cnn-nano:{_teacher(root / 'cnn.pt', 1)}"]
    store = root / "store.zarr"
    world = {"root": root, "data": data, "teachers": teachers, "store": store}
    _ok(*_dump_args(world, store))
    return world


def _dump_args(world: dict[str, Any], out: Path, *extra: str) -> list[str]:
    args = ["dump-logits", "--data", str(world["data"]), "--out", str(out)]
    for t in world["teachers"]:
        args += ["--teacher", t]
    return [*args, "--views", "1", "--topk", "2", "--workers", "0", "--device", "cpu", *extra]


def _ok(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stderr


def _refused(*args: str, started: bool = False) -> str:
    """The error line of a refused command (exit 2, no traceback): its only stderr line, or
    with ``started`` (refused after work began) its last, after progress lines."""
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("civt-pipe: error: ")]
    assert errors == lines[-1:] and (started or len(lines) == 1), result.stderr
    assert "Traceback" not in result.output
    return lines[-1]


def _copy(world: dict[str, Any], tmp_path: Path) -> Path:
    copy = tmp_path / "store.zarr"
    shutil.copytree(world["store"], copy)
    return copy


def _train(world: dict[str, Any], store: Path, out: Path) -> list[str]:
    return [
        "train-student", "--data", str(world["data"]), "--store", str(store),
        "--model", "civt-nano", "--out", str(out), "--epochs", "1", "--batch-size", "16",
        "--device", "cpu", "--workers", "0",
    ]  # fmt: skip


def _flip_every_chunk(store: Path, array: str) -> None:
    """Flip one byte in the middle of every chunk file of ``array`` (the first read hits one)."""
    files = [p for p in (store / array / "c").rglob("*") if p.is_file()]
    assert files
    for path in files:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x5A
        path.write_bytes(bytes(data))


def test_the_pristine_store_verifies(world: dict[str, Any]) -> None:
    assert "store OK" in _ok("inspect-store", str(world["store"]), "--verify")


def test_a_deleted_array_is_refused_not_read_as_zeros(
    world: dict[str, Any], tmp_path: Path
) -> None:
    store = _copy(world, tmp_path)
    shutil.rmtree(store / "teachers" / "cnn")  # consolidated metadata still lists it
    for args in (
        ["inspect-store", str(store)],
        ["inspect-store", str(store), "--verify"],
        _train(world, store, tmp_path / "run"),
    ):
        assert "array teachers/cnn/logprobs is missing" in _refused(*args)
    assert not (tmp_path / "run").exists()


def test_a_deleted_file_is_refused_naming_array_and_file(
    world: dict[str, Any], tmp_path: Path
) -> None:
    store = _copy(world, tmp_path)
    (store / "teachers" / "cnn" / "lse" / "c" / "0" / "0").unlink()
    want = f"file teachers/cnn/lse/c/0/0 of array teachers/cnn/lse (shard {FIRST}) is missing"
    assert want in _refused("inspect-store", str(store), "--verify")
    assert want in _refused(*_train(world, store, tmp_path / "run"))


@pytest.mark.parametrize(
    "array",
    [
        "aug/crop",
        "digests",
        "teachers/cnn/lse",
        "teachers/cnn/logprobs",
        "teachers/cnn/indices",
        "valid",
        "keys",
    ],
)
def test_flipped_bytes_in_any_array_fail_the_checksum(
    world: dict[str, Any], tmp_path: Path, array: str
) -> None:
    store = _copy(world, tmp_path)
    assert (store / array).is_dir()
    _flip_every_chunk(store, array)
    line = _refused("inspect-store", str(store), "--verify")
    assert f"of array {array} is damaged (checksum mismatch)" in line
    line = _refused(*_train(world, store, tmp_path / "run"))
    assert f"of array {array} is damaged (checksum mismatch)" in line


def test_verify_reports_a_store_that_was_never_finalized(tmp_path: Path) -> None:
    spec = make_spec()
    store = LogitStore.create(tmp_path / "s.zarr", spec)
    for name, _ in spec.shards:
        store.write_shard(name, make_block(spec, name))
    with pytest.raises(StoreError, match="never finalized"):
        verify_store(store.path)
    store.finalize()
    verify_store(store.path)


def test_chunks_equal_to_the_fill_value_are_written_and_checked(tmp_path: Path) -> None:
    spec = make_spec()
    store = LogitStore.create(tmp_path / "s.zarr", spec)
    block = make_block(spec, FIRST_HELPER)
    block.aug["flip"][:] = 0  # all fill value: zarr would skip this chunk by default
    store.write_shard(FIRST_HELPER, block)
    chunk = tmp_path / "s.zarr" / "aug" / "flip" / "c" / "0" / "0"
    assert chunk.is_file()
    chunk.unlink()
    with pytest.raises(StoreDamagedError, match=r"file aug/flip/c/0/0 of array aug/flip"):
        inspect_store(tmp_path / "s.zarr")


def test_non_finite_logits_are_never_written(tmp_path: Path) -> None:
    spec = make_spec()
    store = LogitStore.create(tmp_path / "s.zarr", spec)
    block = make_block(spec, FIRST_HELPER)
    top = block.teachers["inn"]
    lse = top.lse.clone()
    lse[1, 0] = float("nan")
    block.teachers["inn"] = TopKLogits(logprobs=top.logprobs, indices=top.indices, lse=lse)
    with pytest.raises(StoreError, match=r"teachers/inn/lse of shard .* NaN or infinite"):
        store.write_shard(FIRST_HELPER, block)
    assert store.missing_shards()[0] == FIRST_HELPER
    assert not (tmp_path / "s.zarr" / "teachers" / "inn" / "lse" / "c").exists()


def test_nan_teacher_logits_stop_the_dump_naming_teacher_and_shard(
    world: dict[str, Any], tmp_path: Path
) -> None:
    bad = _teacher(tmp_path / "bad.pt", 2, poison=True)
    poisoned = {**world, "teachers": [*world["teachers"], f"inn=cnn-nano:{bad}"]}
    line = _refused(*_dump_args(poisoned, tmp_path / "s.zarr"), started=True)
    assert "teacher 'inn' gave non-finite logits (NaN or Inf) on shard test-" in line
    store = LogitStore.open(tmp_path / "s.zarr", check=False)
    assert store.missing_shards() == [s.name for s in store.shards]


# --------------------------------------------------------------------------- the writer lock


def _write_lock(store: Path, pid: int) -> Path:
    path = lock_path(store)
    path.write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    return path


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    return int(proc.stdout)


def test_a_live_writer_keeps_the_store(world: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "s.zarr"
    lock = _write_lock(out, os.getpid())
    line = _refused(*_dump_args(world, out))
    host = socket.gethostname()
    assert line == (
        f"civt-pipe: error: {out} is in use by another writer (pid {os.getpid()}, host {host})"
    )
    assert not out.exists() and lock.is_file()


def test_a_dead_writers_lock_is_taken_over_and_released(
    world: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "s.zarr"
    pid = _dead_pid()
    _write_lock(out, pid)
    stderr = " ".join(_ok(*_dump_args(world, out)).split())  # rich wraps long lines
    assert f"took over the lock of {out} from a writer that is gone (pid {pid}" in stderr
    assert not lock_path(out).exists()
    assert LogitStore.open(out).is_finalized


def test_the_lock_is_exclusive_and_released_on_errors(
    world: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "s.zarr"
    first = WriterLock(out)
    assert first.acquire() is None
    with pytest.raises(StoreError, match="in use by another writer"):
        WriterLock(out).acquire()
    first.release()
    assert not lock_path(out).exists()
    # A refused run (the store exists, made with other options) leaves no lock behind.
    shutil.copytree(world["store"], out)
    assert "different top-k" in _refused(*_dump_args(world, out)[:-6], "--topk", "3",
                                         "--workers", "0", "--device", "cpu")  # fmt: skip
    assert not lock_path(out).exists()


# --------------------------------------------------------------------------- --overwrite


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def test_overwrite_deletes_nothing_before_every_check_passed(
    world: dict[str, Any], tmp_path: Path
) -> None:
    out = _copy(world, tmp_path)
    before = _tree(out)
    typo = {**world, "teachers": [f"cnn=cnn-nano:{world['root'] / 'cnn.ptt'}"]}
    assert "cnn.ptt" in _refused(*_dump_args(typo, out, "--overwrite"))
    assert _tree(out) == before
    # A truncated input shard is found before the old store is touched.
    data = tmp_path / "data"
    shutil.copytree(world["data"], data)
    tar = data / "test-000001.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    cut = {**world, "data": data}
    assert "test-000001.tar" in _refused(*_dump_args(cut, out, "--overwrite"))
    assert _tree(out) == before
    assert not lock_path(out).exists()


def test_a_damaged_store_is_not_resumed_as_if_whole(world: dict[str, Any], tmp_path: Path) -> None:
    store = _copy(world, tmp_path)
    (store / "digests" / "c" / "1" / "0").unlink()
    line = _refused(*_dump_args(world, store))
    assert "file digests/c/1/0 of array digests" in line and "--overwrite" in line


def test_older_format_stores_are_refused_with_a_re_dump_hint(
    world: dict[str, Any], tmp_path: Path
) -> None:
    import zarr

    store = _copy(world, tmp_path)
    zarr.open_group(str(store), mode="r+").attrs.update({"format_version": 2})
    line = _refused("inspect-store", str(store))
    assert "older logit store format version 2" in line and "checksums" in line
    assert "re-dump it with civt-pipe dump-logits --overwrite" in line


def test_a_lock_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot create the writer lock"):
        WriterLock(blocker / "s.zarr").acquire()


def test_a_full_disk_while_writing_a_shard_is_one_line_and_the_shard_is_written_anew(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec()
    store = LogitStore.create(tmp_path / "s.zarr", spec)
    name = spec.shards[0][0]
    original = zarr.storage.LocalStore.set
    calls = {"n": 0}

    async def full_after_two_chunks(self: Any, key: str, value: Any) -> None:
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        await original(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", full_after_two_chunks)
    with pytest.raises(
        StoreError, match=r"^cannot write shard .*no space left on device; fix"
    ) as err:
        store.write_shard(name, make_block(spec, name))
    assert "\n" not in str(err.value)
    monkeypatch.setattr(zarr.storage.LocalStore, "set", original)
    assert not store.written_flags()[0]
    store.write_shard(name, make_block(spec, name))  # the same command again: no "already written"
    assert store.written_flags()[0]
