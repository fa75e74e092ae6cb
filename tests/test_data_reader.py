"""Reading shards: stable (shard, position, key) identity and damaged tars (truncated, corrupt
image) under on_error fail and skip. Who reads which shard is the planner's (test_planning.py)."""

from __future__ import annotations

import io
import shutil
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from civt_pipe.pipeline.data.index import ShardInfo, key_digest
from civt_pipe.pipeline.data.make_shards import MakeShardsConfig, make_shards
from civt_pipe.pipeline.data.reader import (
    Sample,
    iter_samples,
    iter_shard,
)
from civt_pipe.pipeline.data.shard_set import resolve_shards
from civt_pipe.pipeline.runtime.errors import UserError


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "test"
    make_shards(MakeShardsConfig("digits", out, split="test", shard_size=60))
    return out


def png_bytes(value: int, size: tuple[int, int] = (4, 5)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full(size, value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def identity(samples: list[Sample]) -> set[tuple[str, str, int, int, bytes]]:
    return {
        (s.key, s.shard, s.position, s.label, s.image.numpy().tobytes())  # type: ignore[union-attr]
        for s in samples
    }


# ----------------------------------------------------------------------------- shard sets


def test_directory_and_brace_pattern_resolve_the_same_set(digits_dir: Path) -> None:
    by_dir = resolve_shards(digits_dir)
    by_pattern = resolve_shards(f"{digits_dir}/test-{{000000..000005}}.tar")
    assert by_dir.names == by_pattern.names == [f"test-{i:06d}.tar" for i in range(6)]
    assert by_dir.num_samples == by_pattern.num_samples == 359
    assert by_dir.fingerprint() == by_pattern.fingerprint()
    part = resolve_shards(f"{digits_dir}/test-{{000004,000001}}.tar")
    assert part.names == ["test-000004.tar", "test-000001.tar"]
    assert part.num_samples == 120 and part.fingerprint() != by_dir.fingerprint()
    assert part.class_names == by_dir.class_names


def test_missing_or_empty_specs_are_user_errors(digits_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"test-000006\.tar does not exist \(4 of the 10"):
        resolve_shards(f"{digits_dir}/test-{{000000..000009}}.tar")
    with pytest.raises(UserError, match="no such directory"):
        resolve_shards(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"holds no \.tar files"):
        resolve_shards(tmp_path / "empty")
    copy = tmp_path / "copy"
    shutil.copytree(digits_dir, copy)
    (copy / "test-000002.tar").unlink()
    with pytest.raises(UserError, match=r"test-000002\.tar is listed"):
        resolve_shards(copy)


def test_foreign_shards_are_scanned_into_an_equivalent_index(
    digits_dir: Path, tmp_path: Path
) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for tar in digits_dir.glob("*.tar"):
        shutil.copy(tar, foreign / tar.name)
    ours, scanned = resolve_shards(digits_dir), resolve_shards(foreign)
    # The same entries, except the tar size only make-shards records (a scan walks the tars).
    assert scanned.index.shards == tuple(replace(s, tar_bytes=None) for s in ours.index.shards)
    assert all(s.tar_bytes for s in ours.index.shards)
    assert scanned.fingerprint() == ours.fingerprint()
    assert scanned.class_names == tuple(str(c) for c in range(10))
    assert scanned.channels == 1 and scanned.index.format == "png"
    assert identity(list(iter_samples(scanned))) == identity(list(iter_samples(ours)))


def test_scan_rejects_duplicate_keys_and_missing_labels(tmp_path: Path) -> None:
    write_tar(tmp_path / "a.tar", [("k1.png", png_bytes(1)), ("k1.cls", b"0")])
    write_tar(tmp_path / "b.tar", [("k1.png", png_bytes(2)), ("k1.cls", b"1")])
    with pytest.raises(UserError, match="'k1' occurs more than once"):
        resolve_shards(tmp_path)
    (tmp_path / "b.tar").unlink()
    write_tar(tmp_path / "c.tar", [("k2.png", png_bytes(2))])
    with pytest.raises(UserError, match=r"k2 has no \.cls label"):
        resolve_shards(tmp_path)


# ------------------------------------------------------------------------------- reading


def test_positions_keys_and_channels(digits_dir: Path) -> None:
    shard_set = resolve_shards(digits_dir)
    samples = list(iter_shard(shard_set.path("test-000001.tar"), channels=1))
    assert [s.position for s in samples] == list(range(60))
    assert samples[0].key == "digits_test_000060" and samples[0].shard == "test-000001.tar"
    rgb = next(iter_shard(shard_set.path("test-000001.tar"), channels=3))
    assert rgb.image is not None and rgb.image.shape == (3, 8, 8)
    assert torch.equal(rgb.image[0], rgb.image[2]) and torch.equal(rgb.image[:1], samples[0].image)


def test_iter_shard_checks_its_index_entry(digits_dir: Path) -> None:
    path = digits_dir / "test-000000.tar"
    keys = [s.key for s in iter_shard(path, channels=1)]
    good = ShardInfo(path.name, len(keys), key_digest(keys))
    assert len(list(iter_shard(path, channels=1, expected=good))) == 60
    with pytest.raises(UserError, match="index says 61"):
        list(iter_shard(path, channels=1, expected=ShardInfo(path.name, 61, good.key_digest)))
    wrong = ShardInfo(path.name, 60, key_digest(reversed(keys)))
    with pytest.raises(UserError, match="keys that differ"):
        list(iter_shard(path, channels=1, expected=wrong))


def test_truncated_tar_fails_naming_the_shard_or_skips_to_where_it_can(
    digits_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = (digits_dir / "test-000000.tar").read_bytes()
    half = len(raw) // 2 // 512 * 512
    for cut in (half, half + 700):  # at a block boundary and inside a member
        bad = tmp_path / "test-000000.tar"
        bad.write_bytes(raw[:cut])
        with pytest.raises(UserError, match=r"shard .*test-000000\.tar is truncated"):
            list(iter_shard(bad, channels=1))
        samples = list(iter_shard(bad, channels=1, on_error="skip"))
        complete = [s for s in samples if s.image is not None]
        assert 0 < len(complete) < 60
        assert [s.key for s in complete] == [f"digits_test_{i:06d}" for i in range(len(complete))]
        assert "damaged" in capsys.readouterr().err


def test_corrupt_image_fails_with_key_or_is_skipped_keeping_positions(tmp_path: Path) -> None:
    path = tmp_path / "x-000000.tar"
    write_tar(
        path,
        [
            ("a.png", png_bytes(10)),
            ("a.cls", b"1"),
            ("b.png", png_bytes(20)[:40]),  # cut-off PNG
            ("b.cls", b"2"),
            ("c.png", png_bytes(30)),
            ("c.cls", b"0"),
            ("d.png", png_bytes(40)),  # no label
        ],
    )
    with pytest.raises(UserError, match=r"x-000000\.tar: sample b image \.png cannot be decoded"):
        list(iter_shard(path, channels=1))
    samples = list(iter_shard(path, channels=1, on_error="skip"))
    assert [(s.key, s.position, s.label) for s in samples] == [
        ("a", 0, 1),
        ("b", 1, 2),
        ("c", 2, 0),
        ("d", 3, -1),
    ]
    assert samples[1].image is None and samples[1].error is not None
    assert samples[3].image is None and "no .cls" in (samples[3].error or "")
    assert samples[2].image is not None and int(samples[2].image[0, 0, 0]) == 30


def rgb_png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((4, 5, 3), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_scan_makes_a_set_rgb_when_any_probed_image_has_colour(tmp_path: Path) -> None:
    write_tar(
        tmp_path / "a.tar",
        [("g.png", png_bytes(1)), ("g.cls", b"0"), ("c.png", rgb_png(2)), ("c.cls", b"4")],
    )
    shard_set = resolve_shards(tmp_path / "a.tar")
    assert shard_set.channels == 3 and shard_set.num_classes == 5
    images = [s.image for s in iter_samples(shard_set)]
    assert all(i is not None and i.shape == (3, 4, 5) for i in images)


def test_label_outside_the_classes_is_an_error(tmp_path: Path) -> None:
    members = [("a.png", png_bytes(1)), ("a.cls", b"0"), ("b.png", png_bytes(2)), ("b.cls", b"7")]
    write_tar(tmp_path / "a.tar", members)
    full = resolve_shards(tmp_path)
    narrowed = type(full)(full.paths, replace(full.index, class_names=("x", "y")))
    with pytest.raises(UserError, match="sample b has label 7, outside the 2 classes"):
        list(iter_samples(narrowed))
    skipped = list(iter_samples(narrowed, on_error="skip"))
    assert [s.image is None for s in skipped] == [False, True]
