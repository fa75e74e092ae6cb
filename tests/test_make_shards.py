"""make-shards: every source round-trips (counts, labels, keys, class names), bad input fails
cleanly with one line, and nothing half-written looks complete."""

from __future__ import annotations

import gzip
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from civt_pipe.cli.app import app
from civt_pipe.pipeline.data.index import INCOMPLETE_MARKER, INDEX_FILENAME, ShardIndex
from civt_pipe.pipeline.data.make_shards import MakeShardsConfig, make_shards
from civt_pipe.pipeline.data.reader import iter_samples
from civt_pipe.pipeline.data.shard_set import resolve_shards
from civt_pipe.pipeline.data.sources import digits_split_indices, folder_key, open_source
from civt_pipe.pipeline.runtime.errors import UserError

runner = CliRunner()


# ----------------------------------------------------------------------------- tiny inputs


def write_idx(path: Path, array: np.ndarray, *, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)


def make_idx_dir(root: Path, *, gz: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    data = {}
    for prefix, n in (("train", 7), ("t10k", 3)):
        images = rng.integers(0, 256, size=(n, 5, 4), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte", images, gz=gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels, gz=gz)
        data[prefix] = (images, labels)
    return data


def make_cifar10_dir(root: Path) -> dict[str, tuple[np.ndarray, list[int]]]:
    rng = np.random.default_rng(2)
    root.mkdir(parents=True, exist_ok=True)
    names = [f"class{c}" for c in range(10)]
    with open(root / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": names}, fh)
    train_parts, train_labels = [], []
    for b, n in ((1, 3), (2, 2)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        with open(root / f"data_batch_{b}", "wb") as fh:
            pickle.dump({b"data": data, b"labels": labels}, fh)
        train_parts.append(data)
        train_labels += labels
    test = rng.integers(0, 256, size=(2, 3072), dtype=np.uint8)
    with open(root / "test_batch", "wb") as fh:
        pickle.dump({"data": test, "labels": [4, 9]}, fh)
    return {"train": (np.concatenate(train_parts), train_labels), "test": (test, [4, 9])}


def make_folder(root: Path, *, gray_only: bool = False) -> dict[str, str]:
    """Classes 'cat' and 'dog gone' (a space); returns {expected key: class name}."""
    rng = np.random.default_rng(3)
    expected = {}
    files = {"cat": ["a.png", "b.v2.jpg"], "dog gone": ["c.png", "d.PNG", "e.bmp"]}
    for cls, names in files.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(names):
            if gray_only or i % 2:
                arr = rng.integers(0, 256, size=(6, 7), dtype=np.uint8)
            else:
                arr = rng.integers(0, 256, size=(6, 7, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / name)
            expected[folder_key(cls, Path(name).stem)] = cls
    (root / "cat" / "notes.txt").write_text("not an image\n")
    return expected


def read_back(out: Path) -> list:
    return list(iter_samples(resolve_shards(out)))


# ------------------------------------------------------------------------------------ digits


def test_digits_split_is_disjoint_complete_and_stratified() -> None:
    from sklearn.datasets import load_digits

    targets = load_digits().target
    train = digits_split_indices(targets, "train")
    test = digits_split_indices(targets, "test")
    assert len(train) + len(test) == 1797
    assert not set(train) & set(test)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(1797))
    assert 0.19 < len(test) / 1797 < 0.21
    for cls in range(10):  # stratified: each class is cut at the same 20 %
        assert np.sum(targets[test] == cls) == round(0.2 * np.sum(targets == cls))
    # Deterministic: the same call gives the same rows.
    assert np.array_equal(test, digits_split_indices(targets, "test"))


def test_digits_round_trip_keys_labels_pixels(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    index = make_shards(MakeShardsConfig("digits", tmp_path / "test", split="test", shard_size=100))
    assert index.num_samples == 359
    assert [s.num_samples for s in index.shards] == [100, 100, 100, 59]
    assert [s.name for s in index.shards] == [f"test-{i:06d}.tar" for i in range(4)]
    assert index.class_names == tuple(str(c) for c in range(10))
    assert index.channels == 1 and index.image_size == (8, 8) and index.format == "png"
    samples = read_back(tmp_path / "test")
    assert [s.key for s in samples] == [f"digits_test_{i:06d}" for i in range(359)]
    bunch = load_digits()
    rows = digits_split_indices(bunch.target, "test")
    assert [s.label for s in samples] == bunch.target[rows].tolist()
    first = samples[0].image
    assert first is not None and first.shape == (1, 8, 8) and first.dtype == torch.uint8
    expected = np.rint(bunch.images[rows[0]] * 255 / 16).astype(np.uint8)
    assert np.array_equal(first[0].numpy(), expected)
    # Stored statistics describe the pixels actually written.
    pixels = np.stack([s.image.numpy() for s in samples]).astype(np.float64) / 255
    assert index.mean[0] == pytest.approx(pixels.mean(), abs=1e-5)
    assert index.std[0] == pytest.approx(pixels.std(), abs=1e-5)
    # The PNGs are grayscale (mode L) inside the tar.
    with tarfile.open(tmp_path / "test" / "test-000000.tar") as tar:
        member = tar.extractfile("digits_test_000000.png")
        assert member is not None and Image.open(member).mode == "L"


def test_make_shards_is_byte_reproducible(tmp_path: Path) -> None:
    for out in ("a", "b"):
        make_shards(MakeShardsConfig("digits", tmp_path / out, split="test", shard_size=200))
    for name in ("test-000000.tar", "test-000001.tar", INDEX_FILENAME):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


# ------------------------------------------------------------------------------- idx, cifar


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    data = make_idx_dir(tmp_path / "mnist", gz=gz)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        out = tmp_path / split
        index = make_shards(
            MakeShardsConfig(f"idx:{tmp_path / 'mnist'}", out, split=split, shard_size=4)
        )
        images, labels = data[prefix]
        assert index.num_samples == len(labels) and index.channels == 1
        assert index.image_size == (5, 4)
        assert index.class_names == tuple(str(c) for c in range(10))
        samples = read_back(out)
        assert [s.key for s in samples] == [f"idx_{split}_{i:06d}" for i in range(len(labels))]
        assert [s.label for s in samples] == labels.tolist()
        assert np.array_equal(np.stack([s.image[0].numpy() for s in samples]), images)


def test_cifar10_round_trip_keeps_label_names_and_pixels(tmp_path: Path) -> None:
    data = make_cifar10_dir(tmp_path / "c10")
    for split in ("train", "test"):
        out = tmp_path / split
        index = make_shards(MakeShardsConfig(f"cifar:{tmp_path / 'c10'}", out, split=split))
        assert index.class_names == tuple(f"class{c}" for c in range(10))
        assert index.channels == 3 and index.image_size == (32, 32)
        samples = read_back(out)
        raw, labels = data[split]
        assert [s.key for s in samples] == [f"cifar10_{split}_{i:06d}" for i in range(len(labels))]
        assert [s.label for s in samples] == labels
        chw = raw.reshape(-1, 3, 32, 32)
        assert np.array_equal(np.stack([s.image.numpy() for s in samples]), chw)


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    names = [f"fine{c}" for c in range(100)]
    with open(root / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": names, "coarse_label_names": ["x"] * 20}, fh)
    rng = np.random.default_rng(4)
    for split, n in (("train", 3), ("test", 2)):
        fine = [int(v) for v in rng.integers(0, 100, size=n)]
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": fine}
        batch["coarse_labels"] = [0] * n
        with open(root / split, "wb") as fh:
            pickle.dump(batch, fh)
        # The parent directory works too: the source finds cifar-100-python inside it.
        make_shards(MakeShardsConfig(f"cifar:{tmp_path}", tmp_path / f"o{split}", split=split))
        samples = read_back(tmp_path / f"o{split}")
        assert [s.label for s in samples] == fine
        assert samples[0].key == f"cifar100_{split}_000000"
        assert resolve_shards(tmp_path / f"o{split}").class_names == tuple(names)


def test_cifar_pickle_with_foreign_globals_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "c10"
    make_cifar10_dir(root)
    with open(root / "test_batch", "wb") as fh:
        pickle.dump({"data": Path("x"), "labels": [0]}, fh)
    with pytest.raises(UserError, match="test_batch"):
        open_source(f"cifar:{root}", "test")


# ------------------------------------------------------------------------------------ folder


def test_folder_round_trip_keys_classes_and_rgb(tmp_path: Path) -> None:
    expected = make_folder(tmp_path / "imgs")
    index = make_shards(MakeShardsConfig(f"folder:{tmp_path / 'imgs'}", tmp_path / "out"))
    assert index.class_names == ("cat", "dog gone")
    # The PNG and JPEG files are copied as they are, the BMP stored as PNG: members of both.
    assert index.channels == 3 and index.format == "jpg+png" and index.image_size == (6, 7)
    assert index.extra["images"] == {"copied": 4, "encoded": 1, "resized": 0, "skipped": 0}
    assert index.extra["ignored_files"] == 1  # cat/notes.txt
    samples = read_back(tmp_path / "out")
    assert {s.key: index.class_names[s.label] for s in samples} == expected
    assert "cat_b_v2" in expected and "dog_gone_d" in expected
    assert all(s.image is not None and s.image.shape == (3, 6, 7) for s in samples)


def test_folder_of_gray_images_stays_one_channel_png(tmp_path: Path) -> None:
    make_folder(tmp_path / "imgs", gray_only=True)
    index = make_shards(
        MakeShardsConfig(f"folder:{tmp_path / 'imgs'}", tmp_path / "out", format="png")
    )
    assert index.channels == 1
    samples = read_back(tmp_path / "out")
    source = open_source(f"folder:{tmp_path / 'imgs'}", "train")
    by_key = {k: source.load_image(i) for i, k in enumerate(source.keys)}
    for s in samples:
        assert np.array_equal(s.image[0].numpy(), by_key[s.key])  # png is lossless


def test_folder_split_subdirectories(tmp_path: Path) -> None:
    make_folder(tmp_path / "ds" / "train")
    (tmp_path / "ds" / "val" / "cat").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "ds" / "val" / "cat" / "v1.png")
    (tmp_path / "ds" / "val" / "dog gone").mkdir()
    src = f"folder:{tmp_path / 'ds'}"
    train = make_shards(MakeShardsConfig(src, tmp_path / "tr", split="train"))
    test = make_shards(MakeShardsConfig(src, tmp_path / "te", split="test"))
    assert train.num_samples == 5 and test.num_samples == 1
    assert test.class_names == ("cat", "dog gone")


def test_folder_keys_that_collide_are_an_error(tmp_path: Path) -> None:
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    Image.new("L", (3, 3)).save(tmp_path / "imgs" / "a" / "x y.png")
    Image.new("L", (3, 3)).save(tmp_path / "imgs" / "a" / "x.y.png")
    with pytest.raises(UserError, match="same key 'a_x_y'"):
        open_source(f"folder:{tmp_path / 'imgs'}", "train")


# ------------------------------------------------------------------- output dir, atomicity


def test_non_empty_out_dir_needs_overwrite(tmp_path: Path) -> None:
    cfg = MakeShardsConfig("digits", tmp_path / "o", split="test", shard_size=200)
    make_shards(cfg)
    (tmp_path / "o" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="--overwrite"):
        make_shards(cfg)
    index = make_shards(
        MakeShardsConfig("digits", tmp_path / "o", split="test", shard_size=400, overwrite=True)
    )
    assert len(index.shards) == 1
    names = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert names == [INDEX_FILENAME, "keep.txt", "test-000000.tar"]


def test_failed_run_leaves_nothing_that_looks_complete_and_resumes(tmp_path: Path) -> None:
    make_folder(tmp_path / "imgs")
    bad = tmp_path / "imgs" / "dog gone" / "zz.png"
    # A valid PNG header with the pixel data cut off: the header check passes, decoding fails.
    Image.fromarray(np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3)).save(bad)
    bad.write_bytes(bad.read_bytes()[:120])
    # The bad image comes after the first full shard, so a finished tar must be cleaned up too.
    keys = list(open_source(f"folder:{tmp_path / 'imgs'}", "train").keys)
    assert keys.index("dog_gone_zz") >= 2
    out = tmp_path / "out"
    cfg = MakeShardsConfig(f"folder:{tmp_path / 'imgs'}", out, shard_size=2)
    with pytest.raises(UserError, match=r"zz\.png"):
        make_shards(cfg)
    # No index and the marker: readers refuse the directory; no partial file is left.
    assert not (out / INDEX_FILENAME).exists() and (out / INCOMPLETE_MARKER).exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".partial")]
    with pytest.raises(UserError, match="interrupted"):
        resolve_shards(out)
    # Once the file is repaired, the same command finishes the directory.
    Image.fromarray(np.zeros((6, 7, 3), dtype=np.uint8)).save(bad)
    assert make_shards(cfg).num_samples == 6
    assert sorted(p.name for p in out.iterdir()) == [INDEX_FILENAME] + [
        f"train-{i:06d}.tar" for i in range(3)
    ]


def test_interrupted_directory_is_refused_by_readers(tmp_path: Path) -> None:
    out = tmp_path / "o"
    make_shards(MakeShardsConfig("digits", out, split="test", shard_size=200))
    # What a killed run leaves: tars and the marker, no index.
    (out / INDEX_FILENAME).unlink()
    (out / INCOMPLETE_MARKER).write_text("")
    with pytest.raises(UserError, match="interrupted"):
        resolve_shards(out)


def test_config_validation_speaks_to_the_user() -> None:
    with pytest.raises(UserError, match="--shard-size"):
        MakeShardsConfig("digits", Path("x"), shard_size=0)
    with pytest.raises(UserError, match="--split"):
        MakeShardsConfig("digits", Path("x"), split="val")


# ------------------------------------------------------------------------------------- CLI


def test_cli_make_shards_json(tmp_path: Path) -> None:
    out = tmp_path / "o"
    result = runner.invoke(
        app, ["make-shards", "digits", str(out), "--split", "test", "--shard-size", "300", "--json"]
    )
    assert result.exit_code == 0, result.output
    obj = json.loads(result.stdout.strip().splitlines()[-1])
    assert obj["num_samples"] == 359 and [s["num_samples"] for s in obj["shards"]] == [300, 59]
    assert ShardIndex.load(out).to_dict()["shards"] == obj["shards"]


def _assert_one_line_error(args: list[str], needle: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert needle in lines[0]


def test_cli_bad_inputs_give_one_line(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    _assert_one_line_error(["make-shards", f"idx:{tmp_path / 'nope'}", out], "does not exist")
    (tmp_path / "empty").mkdir()
    _assert_one_line_error(["make-shards", f"folder:{tmp_path / 'empty'}", out], "no class")
    (tmp_path / "empty" / "a").mkdir()
    _assert_one_line_error(["make-shards", f"folder:{tmp_path / 'empty'}", out], "no images")
    _assert_one_line_error(["make-shards", f"idx:{tmp_path / 'empty'}", out], "train-images")
    _assert_one_line_error(["make-shards", f"foo:{tmp_path}", out], "unknown source 'foo:")
    make_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "cat" / "broken.jpg").write_bytes(b"not a jpeg at all")
    _assert_one_line_error(["make-shards", f"folder:{tmp_path / 'imgs'}", out], "broken.jpg")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    _assert_one_line_error(["make-shards", "digits", str(tmp_path / "full")], "--overwrite")
