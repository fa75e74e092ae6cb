"""dump-logits: stored logits are the teachers' on the replayed views; resume; checks; skipping.

Everything runs on two digits shards of 200 samples and tiny untrained nano teachers at 8 px.
The multi-process runs (torchrun, SIGKILL) are in ``test_dump_processes.py``.
"""

from __future__ import annotations

import dataclasses
import io
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import zarr
from PIL import Image
from typer.testing import CliRunner

from civt_pipe.cli.app import app
from civt_pipe.pipeline.augment.blocks import iter_blocks, replay
from civt_pipe.pipeline.augment.config import AugmentConfig
from civt_pipe.pipeline.data.index import ShardIndex
from civt_pipe.pipeline.data.make_shards import MakeShardsConfig, make_shards
from civt_pipe.pipeline.data.reader import iter_shard
from civt_pipe.pipeline.data.shard_set import resolve_shards
from civt_pipe.pipeline.models.checkpoint import make_checkpoint, save_checkpoint
from civt_pipe.pipeline.models.factory import create_model
from civt_pipe.pipeline.runtime.errors import UserError
from civt_pipe.pipeline.stages.dump.run import DumpConfig, TeacherSpec, run_dump
from civt_pipe.stores.errors import StoreError
from civt_pipe.stores.logit_store import LogitStore
from civt_pipe.stores.topk import TopKLogits


@dataclass(frozen=True)
class DumpFixture:
    root: Path
    data: str
    """Brace pattern of two 200-sample digits shards."""
    teachers: tuple[str, ...]
    """``--teacher`` values for two untrained 8 px teachers."""

    def config(self, out: Path, **kw: object) -> DumpConfig:
        args: dict[str, object] = {
            "data": self.data,
            "teachers": tuple(TeacherSpec.parse(t) for t in self.teachers),
            "out": out,
            "views": 2,
            "topk": 3,
            "seed": 5,
            "batch_size": 96,
            "workers": 0,
            "device": "cpu",
            "progress": False,
        }
        args.update(kw)
        return DumpConfig(**args)  # type: ignore[arg-type]

    def cli_args(self, out: Path, *extra: str) -> list[str]:
        args = ["dump-logits", "--data", self.data, "--out", str(out)]
        for t in self.teachers:
            args += ["--teacher", t]
        return [*args, "--views", "2", "--topk", "3", "--seed", "5", "--workers", "0", *extra]


def save_teacher(path: Path, arch: str, seed: int, *, classes: int = 10, size: int = 8) -> Path:
    """An untrained teacher checkpoint (digits statistics do not matter for these tests)."""
    torch.manual_seed(seed)
    model = create_model(arch, num_classes=classes, in_chans=1, image_size=size)
    save_checkpoint(path, make_checkpoint(model))
    return path


def build_fixture(root: Path) -> DumpFixture:
    make_shards(MakeShardsConfig(source="digits", out_dir=root / "train", shard_size=200))
    a = save_teacher(root / "a.pt", "cnn-nano", 1)
    b = save_teacher(root / "b.pt", "cnn-nano", 2)
    return DumpFixture(
        root=root,
        data=str(root / "train" / "train-{000000..000001}.tar"),
        teachers=(f"cnn=cnn-nano:{a}", f"twin=cnn-nano:{b}"),
    )


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> DumpFixture:
    return build_fixture(tmp_path_factory.mktemp("dump"))


@pytest.fixture(scope="module")
def dumped(fx: DumpFixture) -> Path:
    out = fx.root / "base.zarr"
    run_dump(fx.config(out))
    return out


def assert_same_store(a: Path, b: Path, *, exact: bool = False) -> None:
    """Same rows, parameters, digests and indices. Log-probabilities and lse are bit-identical
    with ``exact`` (same --batch-size: teacher batches never mix shards, so resuming and the
    rank split do not change a shard's batches), else equal within float16 rounding (another
    batch size may round the teachers' logits differently)."""
    sa, sb = LogitStore.open(a), LogitStore.open(b)
    assert sa.is_finalized and sb.is_finalized
    assert [s.name for s in sa.shards] == [s.name for s in sb.shards]
    for layout in sa.shards:
        x, y = sa.read_shard(layout.name), sb.read_shard(layout.name)
        assert x.keys == y.keys
        assert np.array_equal(x.labels, y.labels)
        assert np.array_equal(x.digests, y.digests)
        assert np.array_equal(x.view_labels, y.view_labels)
        for name in x.aug:
            assert np.array_equal(x.aug[name], y.aug[name]), name
        for t in x.teachers:
            assert torch.equal(x.teachers[t].indices, y.teachers[t].indices)
            if exact:
                assert torch.equal(x.teachers[t].logprobs, y.teachers[t].logprobs)
                assert torch.equal(x.teachers[t].lse, y.teachers[t].lse)
            vx, vy = x.teachers[t].logprobs.float(), y.teachers[t].logprobs.float()
            # One float16 step at the value's magnitude (batching may change the last float32 bit).
            assert torch.allclose(vx, vy, rtol=2**-10, atol=2**-14)
            assert torch.allclose(x.teachers[t].lse, y.teachers[t].lse, rtol=1e-5, atol=1e-5)
    ta = {t["name"]: t["top1"] for t in sa.attrs["teachers"]}
    tb = {t["name"]: t["top1"] for t in sb.attrs["teachers"]}
    assert ta == pytest.approx(tb, abs=2e-3)


# --------------------------------------------------------------------------- the stored logits


def test_stored_topk_and_lse_are_the_teachers_logits_on_replayed_views(
    fx: DumpFixture, dumped: Path
) -> None:
    from civt_pipe.pipeline.models.checkpoint import model_from_checkpoint

    store = LogitStore.open(dumped)
    aug = AugmentConfig.from_dict(store.user_attrs["augment"])
    models = {t.name: model_from_checkpoint(t.checkpoint)[0] for t in fx.config(dumped).teachers}
    shards = resolve_shards(fx.data)
    name = shards.names[1]
    samples = list(iter_shard(shards.path(name), channels=1))
    mixed = 0
    for view in range(store.num_views):
        stored = store.read_view(name, view)
        assert stored.keys == [s.key for s in samples]
        for block in iter_blocks(samples, aug.mix_block):
            lo, hi = block[0].position, block[-1].position + 1
            params = {f: v[lo:hi] for f, v in stored.aug.items()}
            mixed += int((params["mix_partner"] >= 0).sum())
            views = replay(block, params, aug)
            assert np.array_equal(views.digests, stored.digests[lo:hi])
            with torch.inference_mode():
                for t, model in models.items():
                    full = model(views.views)
                    direct = TopKLogits.from_logits(full, store.topk)
                    got = stored.teachers[t]
                    assert torch.equal(got.indices[lo:hi], direct.indices)
                    assert torch.allclose(
                        got.logprobs[lo:hi].float(),
                        direct.logprobs.float(),
                        rtol=2**-10,
                        atol=2**-14,
                    )
                    assert torch.allclose(got.lse[lo:hi], torch.logsumexp(full, -1), atol=1e-5)
                    # Stored log-probabilities never exceed the true ones (rounded toward -inf).
                    top = torch.log_softmax(full, -1).topk(store.topk, dim=-1).values
                    assert bool((got.logprobs[lo:hi].float() <= top + 1e-6).all())
                    # The raw logits come back as logprobs + lse.
                    raw = full.topk(store.topk, dim=-1).values
                    assert torch.allclose(got.values[lo:hi], raw, atol=2e-2)
    assert mixed > 0, "the dump must have mixed views for this test to mean anything"


def test_store_records_config_teachers_and_top1(fx: DumpFixture, dumped: Path) -> None:
    store = LogitStore.open(dumped)
    attrs = store.attrs
    assert attrs["complete"] is True
    assert store.num_views == 2 and store.topk == 3
    assert store.user_attrs["seed"] == 5
    assert store.user_attrs["augment"]["image_size"] == 8
    assert store.user_attrs["dataset_fingerprint"] == resolve_shards(fx.data).fingerprint()
    index = resolve_shards(fx.data).index
    assert (store.user_attrs["dataset_source"], store.user_attrs["dataset_split"]) == (
        index.source,
        index.split,
    )
    teachers = {t["name"]: t for t in attrs["teachers"]}
    assert set(teachers) == {"cnn", "twin"}
    for name, t in teachers.items():
        assert len(t["checkpoint_sha256"]) == 64
        assert 0.0 <= t["top1"] <= 1.0
        # top-1 is argmax vs the dominant label over every (row, view), recomputed here.
        hits = total = 0
        for layout in store.shards:
            block = store.read_shard(layout.name)
            hits += int((block.teachers[name].indices[..., 0].numpy() == block.view_labels).sum())
            total += block.view_labels.size
        assert t["top1"] == pytest.approx(hits / total)
    assert attrs["num_skipped"] == 0


# --------------------------------------------------------------------------- resume


def test_rerun_writes_only_missing_shards_and_equals_uninterrupted_run(
    fx: DumpFixture, dumped: Path, tmp_path: Path
) -> None:
    out = tmp_path / "resumed.zarr"
    # What a run killed after writing shard 0 leaves: shard 1 unflagged, no finalize.
    shutil.copytree(dumped, out)
    store = LogitStore.open(out, mode="r+")
    store.array("written")[1] = False
    store._group.attrs["complete"] = False
    # Garbage in the unflagged rows must not matter: only `written` says what is there.
    layout = store.shard(store.shards[1].name)
    store.array("digests")[layout.row_offset : layout.row_offset + 5] = 7
    shards = resolve_shards(fx.data)
    summary = run_dump(fx.config(out, workers=1))
    assert summary["shards_written"] == 1
    assert summary["images_written"] == shards.index.shards[1].num_samples
    assert_same_store(dumped, out, exact=True)


def test_same_command_on_complete_store_says_so_and_exits_zero(
    fx: DumpFixture, dumped: Path
) -> None:
    result = CliRunner().invoke(app, [*fx.cli_args(dumped), "--json"])
    assert result.exit_code == 0, result.output
    assert "already complete" in result.stderr
    assert '"already_complete": true' in result.stdout


# --------------------------------------------------------------------------- checks


def _error_line(args: list[str]) -> str:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_checks_fail_with_one_line_before_any_work(fx: DumpFixture, tmp_path: Path) -> None:
    out = tmp_path / "never.zarr"
    wrong_classes = save_teacher(tmp_path / "three.pt", "cnn-nano", 3, classes=3)
    wrong_size = save_teacher(tmp_path / "big.pt", "cnn-nano", 3, size=16)
    a = fx.teachers[0]

    def args(*teachers: str, extra: tuple[str, ...] = ()) -> list[str]:
        base = ["dump-logits", "--data", fx.data, "--out", str(out), "--workers", "0"]
        for t in teachers:
            base += ["--teacher", t]
        return base + list(extra)

    assert "3 classes but the data has 10" in _error_line(args(f"x=cnn-nano:{wrong_classes}"))
    line = _error_line(args(a, f"big=cnn-nano:{wrong_size}"))
    assert "'big' takes 16 px" in line and "'cnn' takes 8 px" in line
    assert "--topk 11" in _error_line(args(a, extra=("--topk", "11")))
    assert "given twice" in _error_line(args(a, a))
    assert "teacher name" in _error_line(args("9x=cnn-nano:" + a.split(":", 1)[1]))
    assert "NAME=ARCH:CHECKPOINT" in _error_line(args("cnn-nano"))
    assert "does not exist" in _error_line(args(f"c=cnn-nano:{tmp_path / 'nope.pt'}"))
    assert "holds a cnn-nano, not an inn-nano" in _error_line(
        args("c=inn-nano:" + a.split(":", 1)[1])
    )
    assert "no such directory" in _error_line(
        ["dump-logits", "--data", str(tmp_path / "none"), "--teacher", a, "--out", str(out)]
    )
    assert not out.exists(), "a failed check must not create the store"


def test_existing_output_needs_overwrite_and_mismatched_store_is_named(
    fx: DumpFixture, dumped: Path, tmp_path: Path
) -> None:
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    line = _error_line(fx.cli_args(other))
    assert "not a logit store" in line
    assert (other / "keep.txt").read_text() == "mine"
    line = _error_line([*fx.cli_args(dumped), "--seed", "6"])
    assert "seed" in line and "--overwrite" in line
    line = _error_line([*fx.cli_args(dumped), "--views", "3"])
    assert "views" in line and "--overwrite" in line


def test_an_older_format_store_asks_for_a_re_dump(
    fx: DumpFixture, dumped: Path, tmp_path: Path
) -> None:
    old = tmp_path / "old.zarr"
    shutil.copytree(dumped, old)
    zarr.open_group(str(old), mode="r+").attrs.update({"format_version": 1})
    line = _error_line(fx.cli_args(old))
    assert "older logit store format version 1" in line
    assert "re-dump it with civt-pipe dump-logits --overwrite" in line


def test_copied_shard_is_a_duplicate_key_error(fx: DumpFixture, tmp_path: Path) -> None:
    src = fx.root / "train"
    tar = (src / "train-000000.tar").read_bytes()
    (tmp_path / "a.tar").write_bytes(tar)
    (tmp_path / "b.tar").write_bytes(tar)
    # Without an index the shards are scanned, and the scan sees the repeated keys.
    with pytest.raises(UserError, match="occurs more than once"):
        run_dump(fx.config(tmp_path / "s.zarr", data=str(tmp_path)))
    # With an index (one tar listed under two names) the equal key digests give it away.
    index = ShardIndex.load(src)
    first = index.shards[0]
    copied = dataclasses.replace(
        index,
        shards=(
            dataclasses.replace(first, name="a.tar"),
            dataclasses.replace(first, name="b.tar"),
        ),
    )
    copied.save(tmp_path)
    with pytest.raises(UserError, match=r"occurs in two shards: a\.tar and b\.tar"):
        run_dump(fx.config(tmp_path / "s.zarr", data=str(tmp_path)))
    assert not (tmp_path / "s.zarr").exists()


# --------------------------------------------------------------------------- bad samples


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _tar_with_corrupt_image(path: Path, n: int, bad: int) -> None:
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            for suffix, data in (
                ("png", b"not a png" if i == bad else _png(10 * i)),
                ("cls", str(i % 10).encode()),
            ):
                info = tarfile.TarInfo(f"k{i:03d}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_on_error_skip_records_the_key_and_fail_names_it(fx: DumpFixture, tmp_path: Path) -> None:
    data = tmp_path / "bad"
    data.mkdir()
    # Past the first 16 images: a scan of foreign tars decodes those to learn the channels.
    _tar_with_corrupt_image(data / "s-0.tar", 24, bad=20)
    with pytest.raises(UserError, match="k020"):
        run_dump(fx.config(tmp_path / "fail.zarr", data=str(data)))
    out = tmp_path / "skip.zarr"
    summary = run_dump(fx.config(out, data=str(data), on_error="skip"))
    assert summary["num_skipped"] == 1
    store = LogitStore.open(out)
    assert store.attrs["skipped_keys"] == ["k020"]
    block = store.read_shard("s-0.tar")
    assert block.valid is not None and block.valid.tolist() == [i != 20 for i in range(24)]
    assert np.all(block.digests[20] == 0) and np.all(block.digests[np.arange(24) != 20] != 0)
    assert not np.any(block.aug["mix_partner"] == 20)


def test_threads_option_must_be_positive(fx: DumpFixture, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--threads"):
        fx.config(tmp_path / "x.zarr", threads=0)


def test_default_workers_follow_the_device(fx: DumpFixture, tmp_path: Path) -> None:
    """On the CPU no worker process by default (a read-ahead thread renders beside the forward,
    which gets every core); on CUDA one, unless decoding or rendering is on the GPU (the main
    process's work); a given --workers always wins."""
    cfg = dataclasses.replace(fx.config(tmp_path / "x.zarr"), workers=None)
    assert cfg.loader_workers("cpu") == 0 and cfg.loader_workers("cuda") == 1
    assert dataclasses.replace(cfg, decoder="nvjpeg").loader_workers("cuda") == 0
    assert dataclasses.replace(cfg, render_device="cuda").loader_workers("cuda") == 0
    assert dataclasses.replace(cfg, workers=3).loader_workers("cpu") == 3


# --------------------------------------------------------------------------- background work


def _store_files(path: Path) -> dict[str, bytes]:
    return {
        str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()
    }


class _InlineWriter:
    """The dump's writing as it was before the writer thread: each shard written at once."""

    def __init__(self, store: LogitStore) -> None:
        self.store = store

    def submit(self, name: str, acc: Any) -> None:
        self.store.write_shard(name, acc.to_block())

    def wait(self) -> None:
        pass

    def __enter__(self) -> _InlineWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def test_background_writer_and_read_ahead_write_the_same_bytes(
    fx: DumpFixture, dumped: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `dumped` ran with --workers 0: blocks rendered on the read-ahead thread, shards written
    # on the writer thread. Every file of the store must equal an inline, in-order run's, and
    # a run with a worker process.
    from civt_pipe.pipeline.stages.dump import run as dump_run

    inline = tmp_path / "inline.zarr"
    with monkeypatch.context() as patch:
        patch.setattr(dump_run, "ShardWriter", _InlineWriter)
        patch.setattr(dump_run, "read_ahead", lambda items: items)
        run_dump(fx.config(inline))
    worker = tmp_path / "worker.zarr"
    run_dump(fx.config(worker, workers=1))
    expected = _store_files(dumped)
    assert len(expected) > 10
    assert _store_files(inline) == expected
    assert _store_files(worker) == expected


def test_a_writer_error_stops_the_dump_with_its_line(fx: DumpFixture, tmp_path: Path) -> None:
    from civt_pipe.pipeline.stages.dump.writer import ShardWriter

    out = tmp_path / "s.zarr"
    run_dump(fx.config(out))
    store = LogitStore.open(out, mode="r")  # read-only: write_shard refuses
    finished = SimpleNamespace(to_block=lambda: None)
    with pytest.raises(StoreError, match="read-only"), ShardWriter(store) as writer:
        writer.submit(store.shards[0].name, finished)  # type: ignore[arg-type]
        writer.wait()


def test_read_ahead_keeps_order_and_raises_where_the_producer_failed() -> None:
    from civt_pipe.pipeline.data.streams import read_ahead

    assert list(read_ahead(iter(range(50)), depth=3)) == list(range(50))

    def failing() -> Any:
        yield 1
        yield 2
        raise UserError("bad sample")

    got: list[int] = []
    with pytest.raises(UserError, match="bad sample"):
        for item in read_ahead(failing()):
            got.append(item)
    assert got == [1, 2]
    # A consumer that stops early stops the producer (the generator is closed, no hang).
    endless = read_ahead(iter(int, 1))
    assert next(endless) == 0
    endless.close()
