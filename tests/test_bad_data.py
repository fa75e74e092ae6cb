"""Damaged inputs are refused in one line naming the culprit, before any work (issue 16, items 6
and 10): truncated or damaged tars, keys met twice, images that no longer decode at replay, and
checkpoints that are directories or carry pickled code, in every command that takes them."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from toy_shards import dump_toy_store, make_toy_shards, make_toy_teacher
from typer.testing import CliRunner

from civt_pipe.cli.app import app
from civt_pipe.pipeline.data import shard_set as shard_set_module
from civt_pipe.pipeline.data.imageio import TarDamage, tar_member_names
from civt_pipe.pipeline.data.index import ShardIndex, ShardInfo
from civt_pipe.pipeline.data.shard_set import check_shards_complete, resolve_shards
from civt_pipe.pipeline.runtime.errors import UserError

FIRST = "train-000000.tar"


@dataclass(frozen=True)
class World:
    """Toy shards (2 tars: 20 + 4 samples of 3 classes), an untrained teacher, its store."""

    root: Path
    data: Path
    teacher: Path
    store: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("bad-data")
    data = make_toy_shards(root, "train", per_class=8)
    teacher = make_toy_teacher(root / "cnn.pt")
    store = dump_toy_store(data, teacher, root / "store.zarr", views=1, seed=0)
    return World(root, data, teacher, store)


def copy_shards(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for path in src.iterdir():
        (dst / path.name).write_bytes(path.read_bytes())
    return dst


def rewrite_tar(path: Path, change: dict[str, bytes]) -> None:
    """Rewrite ``path`` with the data of the members named in ``change`` replaced."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m)) for m in tar.getmembers()]
        contents = [(m, change.get(m.name, f.read() if f else b"")) for m, f in members]
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for member, data in contents:
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def cli(*args: str | Path) -> tuple[int, list[str]]:
    """Run the CLI in-process: (exit code, stderr lines)."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stderr.strip().splitlines()


def assert_one_line(code: int, lines: list[str], pattern: str) -> None:
    import re

    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("civt-pipe: error: "), lines
    assert re.search(pattern, lines[0]), lines[0]


# ------------------------------------------------------------------------------ tar walking


def test_header_walk_lists_the_members_tarfile_lists(world: World) -> None:
    path = world.data / FIRST
    with tarfile.open(path) as tar:
        assert tar_member_names(path) == tar.getnames()


def test_long_names_come_from_their_pax_headers(tmp_path: Path) -> None:
    long_key = "d/" + "k" * 120
    write_tar(tmp_path / "a.tar", [(f"{long_key}.png", png(1)), (f"{long_key}.cls", b"0")])
    assert tar_member_names(tmp_path / "a.tar") == [f"{long_key}.png", f"{long_key}.cls"]


@pytest.mark.parametrize(
    ("cut", "where"),
    [
        (lambda n: n // 2 // 512 * 512, r"byte \d+"),  # at a block boundary
        (lambda n: n // 2 // 512 * 512 + 700, r"cut short inside member \S+"),
        (lambda n: n - 10240, "without the end-of-archive blocks"),  # every member, no end
    ],
    ids=["block-boundary", "inside-member", "no-end-blocks"],
)
def test_truncated_tar_is_named_with_where_it_breaks(
    world: World, tmp_path: Path, cut: object, where: str
) -> None:
    data = copy_shards(world.data, tmp_path / "d")
    raw = (data / FIRST).read_bytes()
    (data / FIRST).write_bytes(raw[: cut(len(raw))])  # type: ignore[operator]
    with pytest.raises(UserError, match=rf"shard .*{FIRST} is truncated or damaged: .*{where}"):
        check_shards_complete(resolve_shards(data))


def test_damaged_header_and_truncated_gzip_are_damage(world: World, tmp_path: Path) -> None:
    raw = bytearray((world.data / FIRST).read_bytes())
    with tarfile.open(world.data / FIRST) as tar:
        second = tar.getmembers()[1].offset
    raw[second + 130] ^= 0x01  # one bit of the size field of the second member's header
    (tmp_path / "bad.tar").write_bytes(bytes(raw))
    with pytest.raises(TarDamage, match="header at byte"):
        tar_member_names(tmp_path / "bad.tar")
    packed = gzip.compress((world.data / FIRST).read_bytes())
    (tmp_path / "cut.tar.gz").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(TarDamage):
        tar_member_names(tmp_path / "cut.tar.gz")
    (tmp_path / "whole.tar.gz").write_bytes(packed)
    assert len(tar_member_names(tmp_path / "whole.tar.gz")) == 40


def test_shard_that_differs_from_its_index_entry_is_refused(world: World, tmp_path: Path) -> None:
    data = copy_shards(world.data, tmp_path / "d")
    index = ShardIndex.load(data)
    first = index.shards[0]
    # An entry without make-shards' tar size (a hand-edited or older index) has its tar walked.
    for wrong, message in (
        (replace(first, num_samples=21, tar_bytes=None), "holds 20 samples, its index entry says"),
        (replace(first, key_digest="0" * 64, tar_bytes=None), "keys that differ from its index"),
    ):
        replace(index, shards=(wrong, *index.shards[1:])).save(data)
        with pytest.raises(UserError, match=message):
            check_shards_complete(resolve_shards(data))


def test_tars_of_the_size_make_shards_wrote_are_not_walked(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = copy_shards(world.data, tmp_path / "d")
    index = ShardIndex.load(data)
    assert all(s.tar_bytes == (data / s.name).stat().st_size for s in index.shards)
    walked: list[object] = []
    real_walk = shard_set_module.tar_member_names

    def walk(path: object) -> list[str]:
        walked.append(path)
        return real_walk(path)  # type: ignore[arg-type]

    monkeypatch.setattr(shard_set_module, "tar_member_names", walk)
    check_shards_complete(resolve_shards(data))
    assert walked == []
    # A tar copied under a second name into the index (same size, same key digest) is walked,
    # and its keys are named as duplicates.
    index = ShardIndex.load(data)
    (data / "train-000009.tar").write_bytes((data / FIRST).read_bytes())
    twin = replace(index.shards[0], name="train-000009.tar")
    replace(index, shards=(*index.shards, twin)).save(data)
    with pytest.raises(UserError, match="occurs in two shards"):
        check_shards_complete(resolve_shards(data))
    assert walked
    walked.clear()
    replace(index, shards=index.shards).save(data)
    (data / "train-000009.tar").unlink()
    # One tar of another size: every tar is walked (keys unique across the set need them all).
    raw = (data / FIRST).read_bytes()
    (data / FIRST).write_bytes(raw + bytes(512))  # an extra zero block after the end
    check_shards_complete(resolve_shards(data))
    assert len(walked) == len(index.shards)


def test_key_twice_in_one_run_of_members_is_a_duplicate(tmp_path: Path) -> None:
    # webdataset would merge the two x.png into one sample (or fail as "corrupt").
    write_tar(
        tmp_path / "a.tar",
        [("x.png", png(30)), ("x.cls", b"1"), ("x.png", png(225)), ("x.cls", b"0")],
    )
    with pytest.raises(UserError, match=r"a\.tar holds the key 'x' twice \(x\.png again\)"):
        check_shards_complete(resolve_shards(tmp_path / "a.tar"))


# ------------------------------------------------------------------------------ the commands


@pytest.fixture(scope="module")
def truncated(world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = copy_shards(world.data, tmp_path_factory.mktemp("cut") / "train")
    raw = (data / FIRST).read_bytes()
    (data / FIRST).write_bytes(raw[: len(raw) // 2 // 512 * 512 + 700])
    return data


@pytest.mark.parametrize("command", ["train-student", "train-teacher", "dump-logits", "evaluate"])
def test_truncated_tar_is_one_line_before_work_in_every_stage(
    world: World, truncated: Path, tmp_path: Path, command: str
) -> None:
    out = tmp_path / "out"
    args: dict[str, tuple[str | Path, ...]] = {
        "train-student": ("--store", world.store, "--model", "civt-nano", "--out", out),
        "train-teacher": ("--arch", "cnn-nano", "--out", out),
        "dump-logits": ("--teacher", f"cnn=cnn-nano:{world.teacher}", "--out", out),
        "evaluate": ("--checkpoint", world.teacher),
    }
    epochs = ("--epochs", "1") if command.startswith("train") else ()
    code, lines = cli(command, "--data", truncated, *args[command], *epochs)
    assert_one_line(code, lines, rf"shard \S*{FIRST} is truncated or damaged: it is cut short")
    assert not out.exists()


def test_image_that_no_longer_decodes_at_replay_is_named_not_blamed_on_code(
    world: World, tmp_path: Path
) -> None:
    data = copy_shards(world.data, tmp_path / "d")
    key = tar_member_names(data / FIRST)[0].split(".")[0]
    rewrite_tar(data / FIRST, {f"{key}.png": b"\x89PNG\r\n\x1a\n" + bytes(40)})
    code, lines = cli(
        "train-student",
        *("--data", data, "--store", world.store, "--model", "civt-nano"),
        *("--out", tmp_path / "run", "--epochs", "1", "--batch-size", "4"),
    )
    assert_one_line(
        code,
        lines,
        rf"shard {FIRST}: sample '{key}' cannot be decoded \(.+\); it decoded when dump-logits",
    )


def test_evaluate_refuses_a_key_in_two_shards(world: World, tmp_path: Path) -> None:
    data = copy_shards(world.data, tmp_path / "d")
    index = ShardIndex.load(data)
    second = index.shards[1]
    (data / "train-000002.tar").write_bytes((data / second.name).read_bytes())
    twin = ShardInfo("train-000002.tar", second.num_samples, second.key_digest)
    replace(index, shards=(*index.shards, twin)).save(data)
    code, lines = cli("evaluate", "--checkpoint", world.teacher, "--data", data)
    assert_one_line(
        code, lines, r"the key '\S+' occurs in two shards: train-000001\.tar and train-000002\.tar"
    )


@pytest.fixture(scope="module")
def unsafe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    code = root / "code.pt"
    # os.system by name: the test only needs the reference, the loader must never call it.
    code.write_bytes(b"cposix\nsystem\n(S'true'\ntR." + pickle.dumps({}))
    folder = root / "folder.pt"
    folder.mkdir()
    return {"code": code, "directory": folder}


@pytest.mark.parametrize("kind", ["code", "directory"])
@pytest.mark.parametrize(
    "command", ["train-teacher --init", "dump-logits --teacher", "train-student --teacher", "eval"]
)
def test_bad_checkpoint_is_one_line_in_every_command_that_takes_one(
    world: World, unsafe: dict[str, Path], tmp_path: Path, command: str, kind: str
) -> None:
    ckpt, out = unsafe[kind], tmp_path / "out"
    args: dict[str, tuple[str | Path, ...]] = {
        "train-teacher --init": ("train-teacher", "--arch", "cnn-nano", "--init", ckpt),
        "dump-logits --teacher": ("dump-logits", "--teacher", f"cnn=cnn-nano:{ckpt}"),
        "train-student --teacher": (
            *("train-student", "--teacher", f"cnn=cnn-nano:{ckpt}", "--model", "civt-nano"),
        ),
        "eval": ("evaluate", "--checkpoint", ckpt),
    }
    extra = () if command == "eval" else ("--out", out)
    code, lines = cli(*args[command], "--data", world.data, *extra)
    expected = {
        "code": r"is not a civt-pipe checkpoint: it contains pickled code \(posix\.system\); "
        "refusing to load it",
        "directory": r"has no final\.pt \(is the run finished\?",
    }[kind]
    assert_one_line(code, lines, rf"{os.path.basename(ckpt)} {expected}")
    assert not out.exists() or not any(out.iterdir())
