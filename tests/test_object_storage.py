"""Stores and shards on object storage, against a real S3-compatible server (moto) started here.

Round trip: shards uploaded to a bucket, ``dump-logits`` into ``s3://``, ``inspect-store
--verify``, ``train-student`` from it, a dump killed after one shard and resumed; the stored
arrays equal a local dump's. Bad input: an unreachable endpoint, an unknown scheme, a missing
``[s3]`` extra — each one line, exit 2, no traceback. Shards behind a ``pipe:`` command read as
the same shard set.
"""

from __future__ import annotations

import functools
import http.server
import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import moto.server as moto_server
import numpy as np
import pytest
import s3fs
import torch
from toy_shards import make_toy_shards, make_toy_teacher
from typer.testing import CliRunner

from civt_pipe.cli.app import app
from civt_pipe.pipeline.data.reader import iter_samples
from civt_pipe.pipeline.data.shard_set import resolve_complete_shards, resolve_shards
from civt_pipe.pipeline.models.teacher_spec import TeacherSpec
from civt_pipe.pipeline.runtime.errors import UserError
from civt_pipe.pipeline.stages.dump.config import DumpConfig
from civt_pipe.pipeline.stages.dump.run import run_dump
from civt_pipe.stores.errors import StoreError
from civt_pipe.stores.lock import WriterLock, lock_location
from civt_pipe.stores.logit_store import LogitStore

BUCKET = "civt"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _use_endpoint(mp: pytest.MonkeyPatch, url: str) -> None:
    """Point botocore (hence s3fs) at ``url``; cached file systems keep their old client."""
    mp.setenv("AWS_ENDPOINT_URL", url)
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A moto S3 server with one bucket holding the toy shards under ``s3://civt/train``."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    # moto is a dev dependency: a server that cannot start is a broken environment, and these
    # tests fail rather than pass unchecked.
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port())
    server.start()
    host, port = server.get_host_and_port()
    root = tmp_path_factory.mktemp("s3")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_MAX_ATTEMPTS": "1",  # the unreachable-endpoint test should not retry for long
        }.items():
            mp.setenv(key, value)
        _use_endpoint(mp, f"http://{host}:{port}")
        fs = s3fs.S3FileSystem()
        fs.mkdir(BUCKET)
        data = make_toy_shards(root, "test", per_class=8)  # 24 samples: shards of 20 and 4
        fs.put(f"{data}/", f"{BUCKET}/train/", recursive=True)
        teacher = make_toy_teacher(root / "cnn.pt")
        yield {"root": root, "data": data, "teacher": teacher, "fs": fs}
        s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def _dump_args(s3: dict[str, Any], data: str, out: str, *extra: str) -> list[str]:
    return [
        *("dump-logits", "--data", data, "--out", out),
        *("--teacher", f"cnn=cnn-nano:{s3['teacher']}", "--views", "1", "--topk", "3"),
        *("--workers", "0", "--device", "cpu", *extra),
    ]


def _run(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def _ok(*args: str) -> Any:
    result = _run(*args)
    assert result.exit_code == 0, result.output
    return result


def _error_line(*args: str) -> str:
    result = _run(*args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("civt-pipe: error: "), result.output
    return lines[0]


def _same_arrays(a: str | Path, b: str | Path) -> None:
    sa, sb = LogitStore.open(a), LogitStore.open(b)
    assert sa.is_finalized and sb.is_finalized
    assert sa.attrs["shards"] == sb.attrs["shards"]
    for layout in sa.shards:
        x, y = sa.read_shard(layout.name), sb.read_shard(layout.name)
        assert x.keys == y.keys and np.array_equal(x.digests, y.digests)
        for name in x.aug:
            assert np.array_equal(x.aug[name], y.aug[name]), name
        for t in x.teachers:
            assert torch.equal(x.teachers[t].logprobs, y.teachers[t].logprobs)
            assert torch.equal(x.teachers[t].indices, y.teachers[t].indices)


@pytest.fixture(scope="module")
def local_store(s3: dict[str, Any]) -> Path:
    out = s3["root"] / "local.zarr"
    _ok(*_dump_args(s3, str(s3["data"]), str(out)))
    return out


@pytest.mark.slow  # two dumps, a verify and a training run through the server: ~25 s idle
def test_dump_to_s3_inspect_and_train_student_from_it(
    s3: dict[str, Any], local_store: Path, tmp_path: Path
) -> None:
    url = f"s3://{BUCKET}/round.zarr"
    # One DataLoader worker (the last --workers counts): a forked process reads S3 too.
    _ok(*_dump_args(s3, f"s3://{BUCKET}/train", url, "--workers", "1"))
    assert s3["fs"].exists(f"{BUCKET}/round.zarr/zarr.json")
    assert not s3["fs"].exists(f"{BUCKET}/.round.zarr.lock")  # released
    _same_arrays(url, local_store)  # the same shards give the same store, local or in S3
    assert LogitStore.open(f"file://{local_store}").path == local_store  # file:// is local

    report = json.loads(_ok("inspect-store", url, "--verify", "--json").stdout)
    assert report["path"] == url and report["bytes_on_disk"] > 0
    assert report["bytes_on_disk"] == LogitStore.open(url).bytes_on_disk()

    run = tmp_path / "run"
    args = ["train-student", "--data", f"s3://{BUCKET}/train", "--store", url]
    args += ["--out", str(run), "--epochs", "1", "--batch-size", "8", "--device", "cpu"]
    args += ["--workers", "1"]
    summary = json.loads(_ok(*args, "--json").stdout.strip().splitlines()[-1])
    assert summary["steps"] == 3 and (run / "final.pt").is_file()


@pytest.mark.slow  # two dumps through the server
def test_a_dump_killed_after_one_shard_resumes_in_s3(
    s3: dict[str, Any], local_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"s3://{BUCKET}/resumed.zarr"
    original = LogitStore.write_shard
    written: list[str] = []

    def die_after_one(self: LogitStore, name: str, *args: Any, **kw: Any) -> None:
        if written:
            raise KeyboardInterrupt  # the "kill": nothing after the first shard is written
        original(self, name, *args, **kw)
        written.append(name)

    monkeypatch.setattr(LogitStore, "write_shard", die_after_one)
    with pytest.raises(KeyboardInterrupt):
        _run_dump_in_process(s3, url, f"s3://{BUCKET}/train")
    monkeypatch.undo()
    store = LogitStore.open(url)
    assert store.missing_shards() == [s.name for s in store.shards][1:]
    # A real kill also leaves the lock behind: one naming a process that is gone on this host.
    lock = lock_location(url)
    lock.delete_file()
    host = socket.gethostname()
    lock.create_file(json.dumps({"pid": 2**22 + 12345, "host": host}).encode())

    result = _ok(*_dump_args(s3, f"s3://{BUCKET}/train", url, "--json"))
    assert "took over the lock" in " ".join(result.stderr.split())
    summary = json.loads(result.stdout)
    assert summary["shards_written"] == 1 and summary["complete"]
    _same_arrays(url, local_store)
    assert not lock.exists()


@pytest.mark.usefixtures("s3")
def test_the_s3_lock_is_exclusive_and_released() -> None:
    url = f"s3://{BUCKET}/locked.zarr"
    first = WriterLock(url)
    assert first.acquire() is None
    with pytest.raises(StoreError, match="in use by another writer"):
        WriterLock(url).acquire()
    first.release()
    assert not lock_location(url).exists()
    WriterLock(url).acquire()  # free again


@pytest.mark.usefixtures("s3")
def test_pipe_and_url_shards_are_the_local_shard_set(s3: dict[str, Any]) -> None:
    data = s3["data"]
    local = resolve_complete_shards(str(data))
    pattern = "test-{000000..000001}.tar"
    piped = resolve_complete_shards(f"pipe:cat {data}/{pattern}")
    remote = resolve_complete_shards(f"s3://{BUCKET}/train/{pattern}")
    assert resolve_complete_shards(f"file://{data}").paths == local.paths  # file:// is local
    for other in (piped, remote):
        assert other.names == local.names and other.fingerprint() == local.fingerprint()
        got = [(s.key, s.label, s.image) for s in iter_samples(other)]
        want = [(s.key, s.label, s.image) for s in iter_samples(local)]
        assert [g[:2] for g in got] == [w[:2] for w in want]
        assert all(torch.equal(g[2], w[2]) for g, w in zip(got, want, strict=True))


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_http_shards_read_like_local_and_a_failing_pipe_is_named(s3: dict[str, Any]) -> None:
    data = s3["data"]
    handler = functools.partial(_QuietFiles, directory=str(data.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{data.name}"
        remote = resolve_complete_shards(url)  # index.json over HTTP, tars by range reads
        local = resolve_complete_shards(str(data))
        assert remote.paths == tuple(f"{url}/{n}" for n in local.names)
        assert remote.fingerprint() == local.fingerprint()
        assert [s.key for s in iter_samples(remote)] == [s.key for s in iter_samples(local)]
    finally:
        server.shutdown()
    with pytest.raises(UserError, match="exited with status 1"):
        resolve_shards(f"pipe:cat {data}/missing/test-000000.tar")


@pytest.mark.usefixtures("s3")
def test_a_truncated_tar_in_s3_is_refused_naming_it(s3: dict[str, Any]) -> None:
    fs = s3["fs"]
    fs.put(f"{s3['data']}/", f"{BUCKET}/cut/", recursive=True)
    tar = f"{BUCKET}/cut/test-000001.tar"
    fs.pipe_file(tar, fs.cat_file(tar)[:3000])
    line = _error_line(*_dump_args(s3, f"s3://{BUCKET}/cut", f"s3://{BUCKET}/cut.zarr"))
    assert f"s3://{BUCKET}/cut/test-000001.tar is truncated or damaged" in line
    assert not fs.exists(f"{BUCKET}/cut.zarr")


def test_bad_storage_input_is_one_line(s3: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    assert "unsupported storage scheme nosuch://" in _error_line(
        "inspect-store", "nosuch://bucket/s.zarr"
    )
    assert "no shard index at" in _error_line(
        *_dump_args(s3, f"s3://{BUCKET}/nothing", f"s3://{BUCKET}/x.zarr")
    )

    # Without the [s3] extra: s3fs cannot be imported and fsspec has not registered it.
    registry = sys.modules["fsspec.registry"]._registry  # `fsspec.registry` is a read-only view
    monkeypatch.setitem(sys.modules, "s3fs", None)
    monkeypatch.delitem(registry, "s3", raising=False)
    line = _error_line("inspect-store", f"s3://{BUCKET}/round.zarr")
    assert "pip install 'civt-pipe[s3]'" in line
    monkeypatch.undo()

    with pytest.MonkeyPatch.context() as mp:
        _use_endpoint(mp, f"http://127.0.0.1:{_free_port()}")  # nothing listens there
        start = time.monotonic()
        line = _error_line("inspect-store", f"s3://{BUCKET}/round.zarr")
        assert line.startswith(f"civt-pipe: error: cannot reach s3://{BUCKET}/round.zarr")
        assert time.monotonic() - start < 20
        line = _error_line(*_dump_args(s3, str(s3["data"]), f"s3://{BUCKET}/y.zarr"))
        assert "cannot reach" in line
    s3fs.S3FileSystem.clear_instance_cache()


# ------------------------------------------------------ issue 24: the writer rule on a remote


def _dead_writer_lock(url: str) -> None:
    """What a dump that stopped leaves: its lock, naming a process that is gone on this host."""
    lock = lock_location(url)
    lock.delete_file()
    lock.create_file(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname()}).encode())


@pytest.mark.slow  # two dumps through two servers
def test_a_connection_lost_mid_dump_is_one_line_and_the_rerun_resumes(
    s3: dict[str, Any], local_store: Path
) -> None:
    # A second server of the same moto state (objects are kept in this process): stopping it
    # is the connection going away, starting it on the same port brings it back.
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    url = f"s3://{BUCKET}/lost.zarr"
    original = LogitStore.write_shard
    try:
        with pytest.MonkeyPatch.context() as mp:
            _use_endpoint(mp, f"http://127.0.0.1:{port}")
            written: list[str] = []

            def lose_connection_after_one(self: LogitStore, name: str, *a: Any, **k: Any) -> None:
                if written:
                    server.stop()  # in the middle of the dump, before the second shard
                original(self, name, *a, **k)
                written.append(name)

            mp.setattr(LogitStore, "write_shard", lose_connection_after_one)
            result = _run(*_dump_args(s3, str(s3["data"]), url))
            errors = [line for line in result.stderr.splitlines() if "error:" in line]
            assert result.exit_code == 2 and "Traceback" not in result.output, result.output
            assert len(errors) == 1, result.stderr
            assert errors[0].startswith(f"civt-pipe: error: cannot write {url}: "), errors[0]
            assert errors[0].endswith(
                "run the same command again: it resumes where this one stopped"
            )
        server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
        server.start()
        with pytest.MonkeyPatch.context() as mp:
            _use_endpoint(mp, f"http://127.0.0.1:{port}")
            assert len(LogitStore.open(url).missing_shards()) == 1
            _dead_writer_lock(url)
            summary = json.loads(_ok(*_dump_args(s3, str(s3["data"]), url, "--json")).stdout)
            assert summary["shards_written"] == 1 and summary["complete"]
            _same_arrays(url, local_store)
    finally:
        server.stop()
        s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.slow  # two dumps through the server
def test_a_dump_stopped_while_creating_its_s3_store_resumes_without_overwrite(
    s3: dict[str, Any], local_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import zarr

    url = f"s3://{BUCKET}/half.zarr"
    original = zarr.Group.create_array
    made: list[str] = []

    def stop_after_three(self: Any, name: str, *a: Any, **k: Any) -> Any:
        if len(made) == 3:
            raise KeyboardInterrupt  # the kill, with three arrays made
        made.append(name)
        return original(self, name, *a, **k)

    monkeypatch.setattr(zarr.Group, "create_array", stop_after_three)
    with pytest.raises(KeyboardInterrupt):
        _run_dump_in_process(s3, url, str(s3["data"]))
    monkeypatch.undo()
    assert LogitStore.creation_interrupted(url)
    _dead_writer_lock(url)
    result = _ok(*_dump_args(s3, str(s3["data"]), url, "--json"))
    assert "half-created" in " ".join(result.stderr.split())
    assert json.loads(result.stdout)["complete"]
    _same_arrays(url, local_store)
    assert not LogitStore.creation_interrupted(url)


def _run_dump_in_process(s3: dict[str, Any], url: str, data: str) -> None:
    """``dump-logits`` of ``data`` into ``url`` as a function call (so a test's exception out
    of it, a simulated kill, reaches the test)."""
    run_dump(
        DumpConfig(
            data=data,
            teachers=(TeacherSpec.parse(f"cnn=cnn-nano:{s3['teacher']}"),),
            out=url,
            views=1,
            topk=3,
            workers=0,
            device="cpu",
            progress=False,
        )
    )
