"""make-shards at scale: folder images are copied byte for byte (re-encoded only when resized or
in another format), worker processes give the same tars and index as one process, a killed run
resumes without rewriting finished shards, and bad images are one line or left out and counted.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from civt_pipe.cli.app import app
from civt_pipe.pipeline.data import shard_writer
from civt_pipe.pipeline.data.index import INCOMPLETE_MARKER, INDEX_FILENAME, ShardIndex
from civt_pipe.pipeline.data.make_shards import MakeShardsConfig, make_shards, plan_jobs, run_jobs
from civt_pipe.pipeline.data.reader import iter_samples
from civt_pipe.pipeline.data.shard_set import resolve_shards
from civt_pipe.pipeline.data.shard_writer import resized_shape
from civt_pipe.pipeline.data.sources import folder_key, open_source
from civt_pipe.pipeline.runtime.errors import UserError

runner = CliRunner()


def picture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A structured RGB picture (gradient, a box, soft texture): compresses like a photo."""
    y = np.linspace(0, 1, height)[:, None, None]
    x = np.linspace(0, 1, width)[None, :, None]
    colour = rng.uniform(0, 255, (2, 3))
    image = colour[0] * (1 - y) + colour[1] * y + 40 * x
    top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
    image[top : top + height // 3, left : left + width // 3] = rng.uniform(0, 255, 3)
    image += (
        rng.normal(0, 6, (height // 4 + 1, width // 4 + 1, 1))
        .repeat(4, 0)
        .repeat(4, 1)[:height, :width]
    )
    return np.clip(image, 0, 255).astype(np.uint8)


def jpeg_folder(root: Path, sizes: list[tuple[int, int]], classes: int = 2, seed: int = 0) -> Path:
    """``root/c{k}/i{n}.JPEG`` files of the given (height, width), round-robin over classes."""
    rng = np.random.default_rng(seed)
    for n, (height, width) in enumerate(sizes):
        folder = root / f"c{n % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(picture(rng, height, width)).save(folder / f"i{n:03d}.JPEG", quality=90)
    return root


def members(tar_path: Path) -> dict[str, bytes]:
    with tarfile.open(tar_path) as tar:
        out = {}
        for member in tar.getmembers():
            handle = tar.extractfile(member)
            assert handle is not None
            out[member.name] = handle.read()
        return out


def all_members(out: Path) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for tar in sorted(out.glob("*.tar")):
        found.update(members(tar))
    return found


def spy_on_writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the tars :func:`shard_writer.write_shard` writes from now on."""
    written: list[str] = []
    real_write = shard_writer.write_shard

    def write(job: shard_writer.ShardJob) -> shard_writer.ShardResult:
        written.append(job.path.name)
        return real_write(job)

    monkeypatch.setattr(shard_writer, "write_shard", write)
    return written


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


# --------------------------------------------------------------------------- byte-exact copy


def test_jpeg_and_png_files_are_copied_byte_for_byte(tmp_path: Path) -> None:
    src = jpeg_folder(tmp_path / "imgs", [(20, 28), (24, 18), (30, 30), (16, 40)])
    # A PNG named .JPEG (ImageNet has one): stored as .png, still its own bytes.
    rng = np.random.default_rng(1)
    Image.fromarray(picture(rng, 22, 26)).save(src / "c1" / "disguised.JPEG", format="PNG")
    index = make_shards(MakeShardsConfig(f"folder:{src}", tmp_path / "out", shard_size=2))
    stored = all_members(tmp_path / "out")
    files = sorted(p for p in src.rglob("*.JPEG"))
    assert len(files) == 5
    for path in files:
        key = folder_key(path.parent.name, path.stem)
        ext = "png" if path.stem == "disguised" else "jpg"
        assert stored[f"{key}.{ext}"] == path.read_bytes(), path
    assert index.format == "jpg+png"
    assert index.extra["images"] == {"copied": 5, "encoded": 0, "resized": 0, "skipped": 0}
    # What the readers decode is the files' own pixels, and the statistics describe them.
    pixels = np.concatenate(
        [s.image.reshape(3, -1).numpy() for s in iter_samples(resolve_shards(tmp_path / "out"))],
        axis=1,
    ).astype(np.float64)
    assert index.mean == pytest.approx(tuple(pixels.mean(axis=1) / 255), abs=1e-6)
    assert index.std == pytest.approx(tuple(pixels.std(axis=1) / 255), abs=1e-6)
    assert index.image_size is None  # mixed sizes


def test_other_formats_are_stored_as_png_and_format_forces_one_encoding(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    bmp = picture(rng, 10, 12)
    Image.fromarray(bmp).save(tmp_path / "imgs" / "a" / "x.bmp")
    Image.fromarray(picture(rng, 10, 12)).save(tmp_path / "imgs" / "a" / "y.png")
    index = make_shards(MakeShardsConfig(f"folder:{tmp_path / 'imgs'}", tmp_path / "keep"))
    stored = all_members(tmp_path / "keep")
    assert stored["a_y.png"] == (tmp_path / "imgs" / "a" / "y.png").read_bytes()
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(stored["a_x.png"]))), bmp)
    assert index.format == "png" and index.extra["images"]["encoded"] == 1
    # --format jpg: the PNG is re-encoded too; nothing is left in another encoding.
    index = make_shards(
        MakeShardsConfig(f"folder:{tmp_path / 'imgs'}", tmp_path / "jpg", format="jpg")
    )
    assert sorted(all_members(tmp_path / "jpg")) == ["a_x.cls", "a_x.jpg", "a_y.cls", "a_y.jpg"]
    assert index.format == "jpg" and index.extra["images"]["copied"] == 0


# ------------------------------------------------------------------------------ --resize-short


def test_resized_shape_caps_the_shorter_side_like_torchvision_resize() -> None:
    assert resized_shape(300, 500, 256) == (256, 426)  # int(256 * 500 / 300)
    assert resized_shape(500, 300, 256) == (426, 256)
    assert resized_shape(256, 900, 256) is None  # not larger: left alone
    assert resized_shape(100, 80, 256) is None  # smaller: never upsampled
    assert resized_shape(100, 80, None) is None


def test_resize_short_reencodes_only_the_larger_images(tmp_path: Path) -> None:
    src = jpeg_folder(tmp_path / "imgs", [(30, 50), (20, 20), (12, 40), (16, 16)], classes=1)
    index = make_shards(MakeShardsConfig(f"folder:{src}", tmp_path / "out", resize_short=16))
    stored = all_members(tmp_path / "out")
    sizes = {}
    for name, data in stored.items():
        if name.endswith(".jpg"):
            sizes[name] = Image.open(io.BytesIO(data)).size[::-1]  # (h, w)
    assert sizes == {"c0_i000.jpg": (16, 26), "c0_i001.jpg": (16, 16)} | {
        "c0_i002.jpg": (12, 40),
        "c0_i003.jpg": (16, 16),
    }
    # Too small (12 px) or exactly S: stored as they are, byte for byte.
    assert stored["c0_i002.jpg"] == (src / "c0" / "i002.JPEG").read_bytes()
    assert stored["c0_i003.jpg"] == (src / "c0" / "i003.JPEG").read_bytes()
    assert stored["c0_i000.jpg"] != (src / "c0" / "i000.JPEG").read_bytes()
    assert index.extra["images"] == {"copied": 2, "encoded": 2, "resized": 2, "skipped": 0}
    assert index.extra["resize_short"] == 16


# --------------------------------------------------------------- array sources: unchanged


def test_digits_shards_and_index_are_the_bytes_of_before_the_rewrite(tmp_path: Path) -> None:
    # sha256 of what the decode-and-encode writer (before --workers, receipts and integer pixel
    # sums) wrote for this command: array sources keep their tars and statistics exactly.
    index = make_shards(MakeShardsConfig("digits", tmp_path, split="test", shard_size=200))
    assert index.extra == {"digits_split_seed": 0, "digits_test_fraction": 0.2}
    expected = {
        # Issue 26 added each tar's size (`tar_bytes`) to the index; the tars did not move.
        "index.json": "1108f01111cfadafb111063c9ad967d1343152c71eecf189557b983f46d42697",
        "test-000000.tar": "a971febd01acb06fb699d9c0a08c4f21211dcb8ddf20417580139d58ff580b00",
        "test-000001.tar": "02f946b314345a2dd0c85b68a15b8769f2a4aef8020c90355875a2a340b8f4ec",
    }
    found = {n: hashlib.sha256(b).hexdigest() for n, b in shard_bytes(tmp_path).items()}
    assert found == expected


# ------------------------------------------------------------------------ parallel == serial


def test_two_workers_write_the_same_tars_and_index_as_one(tmp_path: Path) -> None:
    sizes = [(18 + n % 5, 22 + n % 7) for n in range(10)]
    src = jpeg_folder(tmp_path / "imgs", sizes, classes=3)
    Image.fromarray(np.zeros((40, 9, 3), np.uint8)).save(src / "c0" / "p.png")
    (src / "c1" / "bad.JPEG").write_bytes((src / "c1" / "i001.JPEG").read_bytes()[:300])
    common = dict(shard_size=3, resize_short=19, on_error="skip")
    one = make_shards(MakeShardsConfig(f"folder:{src}", tmp_path / "w1", workers=1, **common))
    two = make_shards(MakeShardsConfig(f"folder:{src}", tmp_path / "w2", workers=2, **common))
    assert one == two
    assert len(one.shards) == 4 and one.num_samples == 11  # 12 files, one truncated
    assert shard_bytes(tmp_path / "w1") == shard_bytes(tmp_path / "w2")


# ------------------------------------------------------------------------------- resume


def test_a_killed_run_resumes_without_rewriting_finished_shards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = jpeg_folder(tmp_path / "imgs", [(20, 24)] * 8)
    cfg = MakeShardsConfig(f"folder:{src}", tmp_path / "out", shard_size=2)
    written: list[str] = []
    real_write = shard_writer.write_shard

    def killed_at_third(job: shard_writer.ShardJob) -> shard_writer.ShardResult:
        if len(written) == 2:
            raise KeyboardInterrupt  # what the process sees of Ctrl-C; a SIGKILL sees nothing
        written.append(job.path.name)
        return real_write(job)

    monkeypatch.setattr(shard_writer, "write_shard", killed_at_third)
    with pytest.raises(KeyboardInterrupt):
        make_shards(cfg)
    assert (cfg.out_dir / INCOMPLETE_MARKER).exists()
    assert not (cfg.out_dir / INDEX_FILENAME).exists()
    finished = {n: (cfg.out_dir / n).stat().st_mtime_ns for n in written}

    monkeypatch.undo()
    written = spy_on_writes(monkeypatch)
    make_shards(cfg)  # the same command: no --overwrite needed
    assert written == ["train-000002.tar", "train-000003.tar"]
    assert {n: (cfg.out_dir / n).stat().st_mtime_ns for n in finished} == finished
    fresh = make_shards(MakeShardsConfig(f"folder:{src}", tmp_path / "fresh", shard_size=2))
    assert ShardIndex.load(cfg.out_dir) == fresh
    assert shard_bytes(cfg.out_dir) == shard_bytes(tmp_path / "fresh")  # no receipts left


def test_resume_rewrites_shards_whose_inputs_or_bytes_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = jpeg_folder(tmp_path / "imgs", [(20, 24)] * 6, classes=1)
    cfg = MakeShardsConfig(f"folder:{src}", tmp_path / "out", shard_size=2)
    cfg.out_dir.mkdir()
    (cfg.out_dir / INCOMPLETE_MARKER).write_text("")
    plan = plan_jobs(cfg, open_source(cfg.source, "train"))
    run_jobs(plan, 1)  # three finished shards with receipts, as a killed run leaves them
    # Shard 0: a source file changes; shard 1: its tar is damaged; shard 2 stays valid.
    assert plan[0].files is not None
    path0 = plan[0].files[0]
    Image.fromarray(np.full((20, 24, 3), 7, np.uint8)).save(path0, format="JPEG")
    tar1 = cfg.out_dir / "train-000001.tar"
    tar1.write_bytes(tar1.read_bytes()[:-1024] + bytes(1023) + b"\1")
    written = spy_on_writes(monkeypatch)
    index = make_shards(cfg)
    assert written == ["train-000000.tar", "train-000001.tar"]
    assert index.num_samples == 6
    assert len(list(iter_samples(resolve_shards(cfg.out_dir)))) == 6


@pytest.mark.slow
def test_sigkill_then_the_same_command_gives_the_uninterrupted_result(tmp_path: Path) -> None:
    src = jpeg_folder(tmp_path / "imgs", [(256 + n % 50, 320) for n in range(60)], classes=4)
    args = ["make-shards", f"folder:{src}", str(tmp_path / "out"), "--shard-size", "4"]
    cli = [sys.executable, "-m", "civt_pipe.cli"]
    env = {**os.environ, "CIVT_PIPE_NO_PROGRESS": "1"}
    proc = subprocess.Popen([*cli, *args], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    receipt = tmp_path / "out" / "train-000000.tar.receipt.json"
    while not receipt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "make-shards finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tmp_path / "out" / INCOMPLETE_MARKER).exists()
    # The rerun and the fresh run in this process: only the killed run needs its own.
    rerun = runner.invoke(app, [*args, "--workers", "2"])
    assert rerun.exit_code == 0, rerun.output
    assert "shards finished by an interrupted run" in rerun.stderr
    fresh = runner.invoke(
        app, ["make-shards", f"folder:{src}", str(tmp_path / "fresh"), "--shard-size", "4"]
    )
    assert fresh.exit_code == 0, fresh.output
    assert shard_bytes(tmp_path / "out") == shard_bytes(tmp_path / "fresh")


# -------------------------------------------------------------------------------- bad input


def _one_line(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.stderr
    return lines[0]


def test_a_corrupt_image_is_one_line_or_left_out_and_counted(tmp_path: Path) -> None:
    src = jpeg_folder(tmp_path / "imgs", [(20, 24)] * 5)
    good = (src / "c0" / "i000.JPEG").read_bytes()
    (src / "c1" / "cut.JPEG").write_bytes(good[:-60])  # header fine, data cut short
    (src / "c0" / "junk.jpg").write_bytes(b"not an image at all")  # no header
    out = tmp_path / "out"
    line = _one_line(["make-shards", f"folder:{src}", str(out)])
    assert line.startswith("civt-pipe: error: cannot read image ") and "junk.jpg" in line
    assert not out.exists() or not any(out.iterdir())  # refused before writing anything
    (src / "c0" / "junk.jpg").unlink()
    line = _one_line(["make-shards", f"folder:{src}", str(out)])
    assert "cut.JPEG" in line and "truncated" in line

    (src / "c0" / "junk.jpg").write_bytes(b"not an image at all")
    result = runner.invoke(
        app, ["make-shards", f"folder:{src}", str(out), "--on-error", "skip", "--workers", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "left out 2 image(s) that do not decode" in result.stderr
    index = ShardIndex.load(out)
    assert index.num_samples == 5
    assert index.extra["images"]["skipped"] == 2
    assert sorted(s["file"] for s in index.extra["skipped"]) == ["c0/junk.jpg", "c1/cut.JPEG"]
    assert {s.key for s in iter_samples(resolve_shards(out))} == {
        folder_key(f"c{n % 2}", f"i{n:03d}") for n in range(5)
    }


def test_non_image_files_are_left_out_and_named(tmp_path: Path) -> None:
    src = jpeg_folder(tmp_path / "imgs", [(20, 24)] * 2)
    (src / "c0" / "labels.xml").write_text("<annotation/>")
    (src / "c1" / "README").write_text("x")
    result = runner.invoke(app, ["make-shards", f"folder:{src}", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "left out files that are not images (by extension): c0/labels.xml and 1 more" in (
        " ".join(result.stderr.split())
    )
    assert ShardIndex.load(tmp_path / "out").extra["ignored_files"] == 2


def test_every_image_unreadable_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    (tmp_path / "imgs" / "a" / "x.jpg").write_bytes(b"junk")
    with pytest.raises(UserError, match=r"no image of folder:.* could be read"):
        make_shards(
            MakeShardsConfig(f"folder:{tmp_path / 'imgs'}", tmp_path / "out", on_error="skip")
        )
