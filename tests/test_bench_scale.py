"""The scale bench's pure parts: the synthetic ImageNet-like folder and the extrapolation.

No timing is asserted; bench/scale.py itself is run by hand (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from bench_modules import load_bench

scale = load_bench("scale")
store_bytes = load_bench("store_bytes")


def test_synthetic_photo_is_deterministic_and_within_the_size_range() -> None:
    first = scale.synthetic_photo(3, 7, seed=1)
    assert np.array_equal(first, scale.synthetic_photo(3, 7, seed=1))
    assert not np.array_equal(first, scale.synthetic_photo(4, 7, seed=1))
    for index in range(6):
        pixels = scale.synthetic_photo(index, index % 2)
        height, width, channels = pixels.shape
        assert pixels.dtype == np.uint8 and channels == 3
        assert scale.IMAGE_SIDES[0] <= min(height, width)
        assert max(height, width) <= scale.IMAGE_SIDES[1]


def test_synthetic_photos_compress_like_photographs_not_like_noise_or_flat_colour() -> None:
    from PIL import Image

    sizes = []
    for index in range(4):
        pixels = scale.synthetic_photo(index, index)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
        # Bytes per pixel: white noise at quality 95 takes ~3, a flat field ~0.05.
        sizes.append(len(buffer.getvalue()) / (pixels.shape[0] * pixels.shape[1]))
    assert 0.3 < float(np.mean(sizes)) < 1.5


def test_a_class_keeps_its_colours_and_images_spread_over_classes(tmp_path: Path) -> None:
    colours, frequency = scale.class_style(5, 0)
    again, same = scale.class_style(5, 0)
    assert np.array_equal(colours, again) and frequency == same
    assert not np.array_equal(colours, scale.class_style(6, 0)[0])
    assert scale.image_path(tmp_path, 1003, 1000).parent.name == "n00000003"


def test_a_folder_grows_from_a_prefix_and_links_share_the_files(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    stats = scale.write_synthetic_folder(pool, 4, classes=3, quality=80)
    assert stats["images"] == 4 and stats["mean_jpeg_bytes"] > 0
    assert sorted(p.name for p in pool.iterdir()) == ["n00000000", "n00000001", "n00000002"]
    mtime = scale.image_path(pool, 0, 3).stat().st_mtime_ns
    scale.write_synthetic_folder(pool, 5, classes=3, quality=80)
    assert scale.image_path(pool, 0, 3).stat().st_mtime_ns == mtime  # kept, not rewritten
    linked = scale.link_prefix(pool, tmp_path / "x1", 2, classes=3)
    files = sorted(p for p in linked.rglob("*.JPEG"))
    assert len(files) == 2 and len(list(linked.iterdir())) == 3  # empty class folders stay
    assert files[0].stat().st_ino == scale.image_path(pool, 0, 3).stat().st_ino


def test_store_file_count_matches_the_documented_examples() -> None:
    # docs/store-format.md: 4 shards, 10 aug fields, 2 teachers -> 88 data files + 27 metadata.
    assert scale.store_file_count(shards=4, aug_fields=10, teachers=2) == 88 + 27
    assert scale.store_file_count(shards=1282, aug_fields=10, teachers=2, metadata=False) == 28204


def test_store_file_count_matches_a_written_store(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    path = tmp_path / "s.zarr"
    store_bytes.write_synthetic_store(
        path,
        teacher_logits={"t": torch.randn(5, 2, 10, generator=g)},
        k=3,
        num_views=2,
        shard_size=2,
        image_size=32,
    )
    files = sum(1 for p in path.rglob("*") if p.is_file())
    from civt_pipe.stores.logit_store import LogitStore

    aug_fields = len(LogitStore.open(path).aug_fields)
    assert files == scale.store_file_count(shards=3, aug_fields=aug_fields, teachers=1)


def test_extrapolate_multiplies_the_per_view_costs() -> None:
    plan = scale.Plan("toy", images=2500, num_classes=10, views=4, gpus=2, shard_size=1000)
    costs = scale.Costs(
        teacher_gflops={"a": 3.0, "b": 1.0},
        gpu_tflops=100.0,
        bytes_per_view_teacher=20.0,
        aug_bytes_per_view=30.0,
        other_bytes_per_view=10.0,
        aug_fields=10,
        make_shards_cpu_ms_per_image=3.6,
        decode_cpu_ms_per_image=7.2,
        render_cpu_ms_per_view=0.36,
    )
    out = scale.extrapolate(plan, costs)
    assert out["views"] == 10_000
    assert out["teacher_flops"] == pytest.approx(10_000 * 4e9)
    assert out["gpu_hours"] == pytest.approx(4e13 / 1e14 / 3600)
    assert out["wall_hours"] == pytest.approx(out["gpu_hours"] / 2)
    assert out["store_bytes_per_view"] == pytest.approx(2 * 20 + 30 + 10)
    assert out["store_bytes"] == pytest.approx(10_000 * 80)
    assert out["shards"] == 3
    assert out["store_files"] == scale.store_file_count(shards=3, aug_fields=10, teachers=2)
    assert out["make_shards_cpu_hours"] == pytest.approx(2500 * 3.6 / 3.6e6)
    assert out["stage1_loader_cpu_hours"] == pytest.approx((2500 * 7.2 + 10_000 * 0.36) / 3.6e6)


def test_the_imagenet_plans_have_the_published_sizes() -> None:
    plans = {p.name: p for p in scale.PLANS}
    assert plans["imagenet-1k"].images == 1_281_167
    assert plans["imagenet-21k"].num_classes == 21_841
    assert math.ceil(plans["imagenet-1k"].images / plans["imagenet-1k"].shard_size) == 1282


def test_settings_from_args_applies_the_overrides() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    scale.add_arguments(parser)
    quick = scale.settings_from_args(parser.parse_args(["--quick"]))
    assert quick == scale.QUICK
    s = scale.settings_from_args(
        parser.parse_args(["--base", "5", "--sizes", "1", "2", "--teachers", "a,b"])
    )
    assert (s.base, s.sizes, s.teachers) == (5, (1, 2), ("a", "b"))
    wide = scale.settings_from_args(parser.parse_args(["--image-size", "64"]))
    assert (wide.resize_short, wide.student_patch_size) == (72, 8)
