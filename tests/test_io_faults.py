"""I/O failures are one line naming the path, leave no ``.partial`` behind, and a run can be
resumed afterwards (issue 16, item 5): disk full (ENOSPC, simulated by a failing fsync), a
read-only or foreign directory, a directory where a file belongs, a file where a directory
belongs."""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from toy_shards import dump_toy_store, make_toy_shards, make_toy_teacher
from typer.testing import CliRunner

from civt_pipe.cli.app import app
from civt_pipe.pipeline.data.make_shards import MakeShardsConfig, make_shards
from civt_pipe.pipeline.runtime import atomic
from civt_pipe.pipeline.runtime.atomic import (
    append_jsonl,
    atomic_write_bytes,
    check_output_dir,
    check_output_file,
)
from civt_pipe.pipeline.runtime.errors import UserError

FULL_TEXT = (
    "no space left on device; free some space, then run the command again"
    " (with --resume if it has one)"
)
FULL = re.escape(FULL_TEXT)


def fail_fsync_of(
    monkeypatch: pytest.MonkeyPatch, root: Path, suffix: str, *, nth: int = 1
) -> Callable[[], int]:
    """From now on the ``nth`` fsync of a file under ``root`` whose name ends with ``suffix``
    fails with ENOSPC (the point where a full disk surfaces for buffered writes). Returns a call
    counter. The file behind the descriptor is found by its inode, which works on any POSIX
    system."""
    real = os.fsync
    seen = [0]

    def is_target(fd: int) -> bool:
        st = os.fstat(fd)
        return any(
            (c.st_dev, c.st_ino) == (st.st_dev, st.st_ino)
            for c in (p.stat() for p in root.rglob("*" + suffix))
        )

    def fsync(fd: int) -> None:
        if is_target(fd):
            seen[0] += 1
            if seen[0] == nth:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    return lambda: seen[0]


def partials(root: Path) -> list[Path]:
    return sorted(root.rglob("*.partial"))


# ------------------------------------------------------------------------------ the writer


def test_disk_full_is_one_line_keeps_the_old_file_and_leaves_no_partial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "ckpt.pt"
    target.write_bytes(b"old")
    fail_fsync_of(monkeypatch, tmp_path, "ckpt.pt.partial")
    with pytest.raises(UserError, match=rf"cannot write \S*ckpt\.pt: {FULL}"):
        atomic_write_bytes(target, b"new" * 1000)
    assert target.read_bytes() == b"old" and not partials(tmp_path)


def test_directory_in_place_of_the_file_is_one_line_and_no_partial(tmp_path: Path) -> None:
    (tmp_path / "out.pt").mkdir()
    with pytest.raises(UserError, match=r"cannot write \S*out\.pt: is a directory"):
        atomic_write_bytes(tmp_path / "out.pt", b"x")
    assert not partials(tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match=r"cannot write \S*file/m\.jsonl: \S*file is not a dir"):
        append_jsonl(tmp_path / "file" / "m.jsonl", {"a": 1})


def test_a_bug_keeps_its_exception_and_still_removes_the_partial(tmp_path: Path) -> None:
    with pytest.raises(ZeroDivisionError), atomic.atomic_writer(tmp_path / "x.bin") as fh:
        fh.write(b"half")
        _ = 1 / 0
    assert not (tmp_path / "x.bin").exists() and not partials(tmp_path)


# ------------------------------------------------------------------------- checks before work


def test_output_checks_name_what_is_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match=r"dir is a directory; give the path of a file"):
        check_output_file(tmp_path / "dir")
    with pytest.raises(UserError, match=r"file exists and is not a directory"):
        check_output_dir(tmp_path / "file")
    with pytest.raises(UserError, match=r"cannot write \S*file/a/b\.pt: \S*file is a file"):
        check_output_file(tmp_path / "file" / "a" / "b.pt")
    check_output_file(tmp_path / "new" / "deeper" / "x.pt")  # created later, by the writer
    check_output_dir(tmp_path / "new" / "run")
    assert not (tmp_path / "new").exists()  # a check writes nothing


def test_unwritable_directory_is_refused_up_front(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root ignores permission bits, so the refusal itself is simulated here; the chmod test
    # below runs it for real when the suite is not root.
    monkeypatch.setattr(atomic.os, "access", lambda *_a, **_k: False)
    with pytest.raises(UserError, match=r"run: \S+ is not writable \(permission denied\)"):
        check_output_dir(tmp_path / "run")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory_is_refused_by_the_cli_before_work(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = CliRunner().invoke(
            app, ["make-shards", "digits", str(locked / "shards"), "--shard-size", "100"]
        )
    finally:
        locked.chmod(0o700)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"civt-pipe: error: cannot write {locked / 'shards'}: {locked} is not writable "
        "(permission denied)"
    ]


# ------------------------------------------------------------------------------ the commands


def test_make_shards_on_a_full_disk_is_one_line_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_toy_shards(tmp_path, "train", per_class=8)  # its image folder is the source here
    cfg = MakeShardsConfig(source=f"folder:{tmp_path / 'src-train'}", out_dir=tmp_path / "out")
    cfg = replace(cfg, shard_size=10, format="png")
    fail_fsync_of(monkeypatch, tmp_path, "train-000001.tar.partial")
    with pytest.raises(UserError, match=rf"train-000001\.tar: {FULL}"):
        make_shards(cfg)
    # No partial and no index; the finished first tar (with its receipt and the marker) stays
    # for the next run, which resumes.
    names = sorted(p.name for p in cfg.out_dir.iterdir())
    assert names == [".make-shards-incomplete", "train-000000.tar", "train-000000.tar.receipt.json"]
    monkeypatch.undo()
    assert len(make_shards(cfg).shards) == 3


def test_train_teacher_out_file_with_overwrite_is_refused_before_training(
    tmp_path: Path,
) -> None:
    """--out is a run directory: a file in its place is refused, even with --overwrite, and
    left as it was."""
    data = make_toy_shards(tmp_path, "train", per_class=4)
    (tmp_path / "out.pt").write_bytes(b"an older teacher file")
    result = CliRunner().invoke(
        app,
        [
            *("train-teacher", "--arch", "cnn-nano", "--data", str(data)),
            *("--out", str(tmp_path / "out.pt"), "--overwrite", "--epochs", "1"),
        ],
    )
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"civt-pipe: error: {tmp_path / 'out.pt'} exists and is not a directory"
    ]
    assert (tmp_path / "out.pt").read_bytes() == b"an older teacher file"
    assert not partials(tmp_path)


@pytest.mark.slow  # three short train-student runs and a dump: ~35 s on 2 busy cores
def test_train_student_on_a_full_disk_stops_in_one_line_and_resumes_to_the_same_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_toy_shards(tmp_path, "train", per_class=8)
    teacher = make_toy_teacher(tmp_path / "cnn.pt")
    store = dump_toy_store(data, teacher, tmp_path / "store.zarr", views=2)

    def train(run: Path, *extra: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(
            app,
            [
                *("train-student", "--data", str(data), "--store", str(store)),
                *("--model", "civt-nano", "--out", str(run), "--epochs", "2"),
                *("--batch-size", "8", "--json", *extra),
            ],
        )
        return result.exit_code, result.stdout, result.stderr

    code, out, _ = train(tmp_path / "straight")
    assert code == 0, out
    expected = json.loads(out)["weights_sha256"]

    run = tmp_path / "full"
    # Epoch 1 is saved, epoch 2 is not.
    saves = fail_fsync_of(monkeypatch, tmp_path, "last.pt.partial", nth=2)
    code, _, err = train(run)
    assert saves() == 2
    assert code == 2
    # The progress of epoch 1 comes first; the failure is the one last line, no traceback.
    last_line = err.strip().splitlines()[-1]
    assert last_line == f"civt-pipe: error: cannot write {run / 'last.pt'}: {FULL_TEXT}"
    assert "Traceback" not in err
    assert not partials(run) and not (run / "final.pt").exists()
    monkeypatch.undo()
    code, out, err = train(run, "--resume")
    assert code == 0, err
    assert json.loads(out)["weights_sha256"] == expected
