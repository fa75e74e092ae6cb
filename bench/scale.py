"""Scale bench (issue 14 part 6): per-image costs of the pipeline at 1×, 4× and 16× a base size.

``python bench/scale.py [--quick] [--base N] [--json]`` builds a synthetic ImageNet-like folder
(1,000 class folders, JPEGs of 256–500 px per side with per-class colour fields, shapes and
multi-scale texture, ~100 kB each like ImageNet's), then at each size measures:

- ``make-shards folder:`` images/s copying the JPEG bytes with 1 and 2 workers, and the
  ``--resize-short`` run that makes the stages' data;
- stage one: ``dump-logits`` views/s ÷ the same teachers' bare forward on in-memory tensors;
- stage two: ``train-student --store`` steps/s ÷ the same with ``--token-mode none``;
- peak memory of each stage alone in a fresh process (``peak_rss.py``): flat in N if the
  stages stream;
- store bytes and file count per image (and the file count the store-format formula predicts).

Once per run it also counts the ImageNet teachers' FLOPs at 224 px and the store bytes per
(view, teacher) of synthetic C = 1,000 and C = 21,841 stores, and extrapolates to ImageNet-1k
and ImageNet-21k on 8 GPUs (:func:`extrapolate`; docs/scaling.md writes the assumptions out).
Small models and 64 px views keep it a CPU bench. Progress goes to stderr; ``--json`` prints one
JSON object. ``bench/run.py --full`` runs it too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Only light modules at the top, so that importing this bench stays cheap.
from make_shards_speed import time_make_shards
from peak_rss import measure
from stages import (
    Teacher,
    dump_config_kwargs,
    load_teacher_models,
    median_steps_per_s,
    step_records,
    student_config_kwargs,
)

from civt_pipe.pipeline.runtime.console import info

IMAGE_SIDES = (256, 500)
"""Smallest and largest side of a synthetic JPEG, in px (ImageNet's are mostly 300–500)."""
IMAGENET_MEAN_JPEG_BYTES = 110_000
"""Mean file size of ImageNet-1k train JPEGs (~140 GB / 1.28 M), the size the folder aims at."""
IMAGENET_TEACHERS = ("resnet18", "rednet26")
"""The pair whose FLOPs the extrapolation uses (a convolution and an involution teacher)."""
IMAGENET_21K_CLASSES = 21_841


# ------------------------------------------------------------------------------------------
# The synthetic folder


def class_style(label: int, seed: int) -> tuple[np.ndarray, float]:
    """A class's look: two RGB colours ``[2, 3]`` of its stripe field and the stripes' frequency."""
    rng = np.random.default_rng([seed, label, 1])
    return rng.uniform(0, 255, (2, 3)), float(rng.uniform(2.0, 12.0))


def synthetic_photo(index: int, label: int, *, seed: int = 0) -> np.ndarray:
    """uint8 RGB pixels ``[H, W, 3]`` of image ``index`` of class ``label``; deterministic.

    What makes JPEG sizes and decode times photograph-like: a class-coloured stripe field at a
    random angle, 4–9 filled shapes, and texture at 2 and 8 px scales (natural images have
    detail at every scale, but not independent per-pixel noise). At JPEG quality 95 the mean
    file is ~100 kB, ImageNet's size.
    """
    from PIL import Image, ImageDraw

    rng = np.random.default_rng([seed, index, label])
    height, width = (int(v) for v in rng.integers(IMAGE_SIDES[0], IMAGE_SIDES[1] + 1, 2))
    colours, frequency = class_style(label, seed)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    angle = rng.uniform(0.0, 2 * np.pi)
    wave = 0.5 + 0.5 * np.sin(frequency * np.pi * (x * np.cos(angle) + y * np.sin(angle)))
    stripes = colours[0] + (colours[1] - colours[0]) * wave
    image = Image.fromarray(np.clip(stripes, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(4, 10))):
        x0, x1 = sorted(rng.integers(0, width, 2).tolist())
        y0, y1 = sorted(rng.integers(0, height, 2).tolist())
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x1 + 8, y1 + 8), fill=colour)
    pixels = np.asarray(image, dtype=np.int16)
    for scale, amplitude in ((2, 40.0), (8, 24.0)):
        coarse = rng.normal(128.0, amplitude, (-(-height // scale), -(-width // scale), 3))
        small = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8), "RGB")
        texture = small.resize((width, height), Image.Resampling.BILINEAR)
        pixels = pixels + np.asarray(texture, dtype=np.int16) - 128
    return np.clip(pixels, 0, 255).astype(np.uint8)


def image_path(root: Path, index: int, classes: int) -> Path:
    """Where image ``index`` lives: class ``index mod classes``, so any prefix spreads classes."""
    return root / f"n{index % classes:08d}" / f"img_{index:08d}.JPEG"


def write_synthetic_folder(
    root: Path, count: int, *, classes: int, seed: int = 0, quality: int = 95
) -> dict[str, float]:
    """Images ``0 .. count-1`` under ``root`` (every one of the ``classes`` folders exists).

    Files already there are kept, so a larger folder grows from a smaller one. Returns the
    count and the mean file size in bytes.
    """
    from PIL import Image

    for label in range(classes):
        (root / f"n{label:08d}").mkdir(parents=True, exist_ok=True)
    total = 0
    for index in range(count):
        path = image_path(root, index, classes)
        if not path.exists():
            pixels = synthetic_photo(index, index % classes, seed=seed)
            Image.fromarray(pixels).save(path, quality=quality)
        total += path.stat().st_size
    return {"images": count, "mean_jpeg_bytes": total / count if count else 0.0}


def link_prefix(pool: Path, root: Path, count: int, *, classes: int) -> Path:
    """``root`` holding images ``0 .. count-1`` of ``pool`` as hard links (no copies)."""
    shutil.rmtree(root, ignore_errors=True)
    for label in range(classes):
        (root / f"n{label:08d}").mkdir(parents=True)
    for index in range(count):
        os.link(image_path(pool, index, classes), image_path(root, index, classes))
    return root


# ------------------------------------------------------------------------------------------
# Pure arithmetic: file counts and the extrapolation


def store_file_count(*, shards: int, aug_fields: int, teachers: int, metadata: bool = True) -> int:
    """Files of a finalized format-4 store with one row block per shard (docs/store-format.md).

    ``files = N_shards × N_arrays + N_metadata`` with ``N_arrays = 4 + N_per_view``,
    ``N_per_view = 2 + N_aug_fields + 3 × N_teachers`` and ``N_metadata = N_arrays + 3 +
    N_teachers``; independent of V.
    """
    per_view = 2 + aug_fields + 3 * teachers
    arrays = 4 + per_view
    data = shards * arrays
    return data + (arrays + 3 + teachers if metadata else 0)


@dataclass(frozen=True, slots=True)
class Plan:
    """A dataset to extrapolate to."""

    name: str
    images: int
    num_classes: int
    views: int = 100
    gpus: int = 8
    shard_size: int = 1000


@dataclass(frozen=True, slots=True)
class Costs:
    """Per-view and per-image costs the extrapolation multiplies (measured or assumed)."""

    teacher_gflops: Mapping[str, float]
    """FLOPs of one view through each teacher at the plan's resolution, in 10⁹."""
    gpu_tflops: float
    """Sustained throughput of one GPU on the teachers' forward, in 10¹² FLOP/s."""
    bytes_per_view_teacher: float
    """Compressed top-k logits of one (view, teacher) at the plan's class count."""
    aug_bytes_per_view: float
    other_bytes_per_view: float
    """Keys, labels, validity, view labels and digests, per view."""
    aug_fields: int
    make_shards_cpu_ms_per_image: float
    decode_cpu_ms_per_image: float
    """Stage one decodes each image once for all its views."""
    render_cpu_ms_per_view: float
    """Crop, flip, RandAugment, erasing and mixing of one view at the plan's resolution."""


def extrapolate(plan: Plan, costs: Costs) -> dict[str, float]:
    """Teachers' FLOPs, GPU hours, store size and file count of ``plan`` (pure arithmetic)."""
    views = plan.images * plan.views
    flops = views * sum(costs.teacher_gflops.values()) * 1e9
    gpu_hours = flops / (costs.gpu_tflops * 1e12) / 3600
    teachers = len(costs.teacher_gflops)
    per_view = (
        teachers * costs.bytes_per_view_teacher
        + costs.aug_bytes_per_view
        + costs.other_bytes_per_view
    )
    shards = math.ceil(plan.images / plan.shard_size)
    return {
        "views": float(views),
        "teacher_flops": flops,
        "gpu_hours": gpu_hours,
        "wall_hours": gpu_hours / plan.gpus,
        "store_bytes": views * per_view,
        "store_bytes_per_view": per_view,
        "store_files": float(
            store_file_count(shards=shards, aug_fields=costs.aug_fields, teachers=teachers)
        ),
        "shards": float(shards),
        "make_shards_cpu_hours": plan.images * costs.make_shards_cpu_ms_per_image / 3.6e6,
        "stage1_loader_cpu_hours": (
            plan.images * costs.decode_cpu_ms_per_image + views * costs.render_cpu_ms_per_view
        )
        / 3.6e6,
    }


PLANS = (
    Plan("imagenet-1k", images=1_281_167, num_classes=1000),
    Plan("imagenet-21k", images=14_197_122, num_classes=IMAGENET_21K_CLASSES),
)
A100_BF16_PEAK_TFLOPS = 312.0
"""NVIDIA A100's dense bf16 tensor-core peak."""
SUSTAINED_FRACTION = 0.3
"""Assumed share of the peak a ResNet/RedNet forward at batch 256, bf16, channels-last sustains
(convolutions with few channels and the involution's unfold run far below peak)."""


# ------------------------------------------------------------------------------------------
# Measurements


@dataclass(frozen=True, slots=True)
class ScaleSettings:
    """Sizes and knobs of one scale-bench run."""

    base: int = 32
    """Images at 1× (ImageNet's 1,000 class folders always exist; at 1× most are empty)."""
    sizes: tuple[int, ...] = (1, 4, 16)
    classes: int = 1000
    teachers: tuple[str, ...] = ("cnn-nano", "inn-nano")
    """Untrained teachers at ``image_size`` (speed does not depend on training)."""
    image_size: int = 32
    """Views' side in px. At ≤ 64 px the ImageNet teachers drop their stride-4 stem (small
    input), so a 64 px ResNet-18 view costs more FLOPs than a 224 px one: keep the nano ones."""
    shard_size: int = 32
    views: int = 1
    topk: int = 5
    dump_batch_size: int = 128
    student_batch_size: int = 16
    student_epochs: int = 2
    workers: int = 1
    threads: int = 1
    """torch threads everywhere, the bare forward included (the dump runs 1 thread next to
    its loader worker; on a busy 2-core machine a second thread spins)."""
    repeats: int = 2
    """Timed calls of the bare forward after each dump."""
    jpeg_quality: int = 95
    store_bytes_samples: int = 1000
    """Samples (one shard, as in the plans) of the synthetic stores at C = 1,000 and 21,841."""
    seed: int = 0
    make_shards_workers: tuple[int, ...] = field(default=(1, 2))

    @property
    def resize_short(self) -> int:
        """make-shards --resize-short of the stages' data: 9/8 of the views (72 px for 64)."""
        return self.image_size * 9 // 8

    @property
    def student_patch_size(self) -> int:
        """civt-nano's patch: 8 × 8 = 64 tokens at any image size."""
        return max(1, self.image_size // 8)


QUICK = ScaleSettings(base=8, shard_size=8, student_batch_size=4, store_bytes_samples=128)


def _untrained_teachers(work: Path, s: ScaleSettings) -> list[Teacher]:
    import torch

    from civt_pipe.pipeline.models.checkpoint import make_checkpoint, save_checkpoint
    from civt_pipe.pipeline.models.factory import create_model

    out = []
    for i, arch in enumerate(s.teachers):
        torch.manual_seed(s.seed + i)
        model = create_model(arch, num_classes=s.classes, in_chans=3, image_size=s.image_size)
        path = work / f"teacher{i}-{arch}.pt"
        save_checkpoint(path, make_checkpoint(model))
        out.append(Teacher(f"t{i}", arch, path))
    return out


def _files_and_bytes(path: Path, suffix: str = "") -> tuple[int, int]:
    files = [p for p in path.rglob(f"*{suffix}") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def measure_size(
    work: Path,
    pool: Path,
    times: int,
    s: ScaleSettings,
    teachers: list[Teacher],
    forward: Callable[[], None],
) -> dict[str, Any]:
    """Every per-size figure at ``times`` × the base size."""
    from compute import bare_forward_views_per_s
    from store_bytes import METADATA_FILE, store_bytes_report

    count = times * s.base
    source = link_prefix(pool, work / f"images-x{times}", count, classes=s.classes)
    out: dict[str, Any] = {"images": count}

    # make-shards: byte copy at each worker count (fresh output each), then the resized data.
    copy: dict[str, Any] = {"images_per_s": {}, "cpu_ms_per_image": {}}
    for workers in s.make_shards_workers:
        target = work / f"copy-x{times}-w{workers}"
        wall, cpu = time_make_shards(source, target, workers=workers, shard_size=s.shard_size)
        copy["images_per_s"][str(workers)] = round(count / wall, 1)
        copy["cpu_ms_per_image"][str(workers)] = round(1000 * cpu / count, 2)
        tars, tar_bytes = _files_and_bytes(target, ".tar")
        copy["tar_bytes_per_image"] = round(tar_bytes / count)
        copy["tars"] = tars
        shutil.rmtree(target)
    data = work / f"shards-x{times}"
    resized, _ = time_make_shards(
        source, data, workers=s.workers, shard_size=s.shard_size, resize_short=s.resize_short
    )
    copy["resize_short_images_per_s"] = round(count / resized, 1)
    out["make_shards"] = copy
    shutil.rmtree(source)

    env = {"OMP_NUM_THREADS": str(s.threads)}
    # Stage one in a fresh process (its peak memory), then the bare forward in this one.
    store = work / f"store-x{times}.zarr"
    dump = measure(
        "dump",
        dump_config_kwargs(
            data,
            teachers,
            store,
            views=s.views,
            topk=s.topk,
            seed=s.seed,
            batch_size=s.dump_batch_size,
            workers=s.workers,
            threads=s.threads,
        ),
        env=env,
    )
    summary = dump["summary"]
    dump_rate = float(summary["views_written"]) / float(summary["seconds"])
    bare = bare_forward_views_per_s(
        forward, s.dump_batch_size, threads=(s.threads,), repeats=s.repeats
    )
    out["stage1"] = {
        "dump_views_per_s": round(dump_rate, 2),
        "bare_forward_views_per_s": round(bare, 2),
        "ratio": round(dump_rate / bare, 4),
        "peak_rss_mb": round(dump["peak_rss_mb"], 1),
        "peak_pss_with_workers_mb": round(dump["peak_pss_with_workers_mb"], 1),
    }

    # Stage two: the store's student against the token-free, cross-entropy-only one.
    stage2: dict[str, Any] = {}
    for name, token_mode in (("store", "per-teacher"), ("student_only", "none")):
        run_dir = work / "runs" / f"{name}-x{times}"
        kwargs = student_config_kwargs(
            data,
            run_dir,
            store=store,
            token_mode=token_mode,
            epochs=s.student_epochs,
            batch_size=s.student_batch_size,
            workers=s.workers,
            seed=s.seed,
            views=s.views,
            lr=1e-3,
        )
        kwargs.update(patch_size=s.student_patch_size, log_every=1, threads=s.threads)
        run = measure("train", kwargs, env=env)
        rate = median_steps_per_s(step_records(run_dir / "metrics.jsonl"), s.student_batch_size)
        stage2[name] = {
            "steps_per_s": round(rate, 2),
            "peak_rss_mb": round(run["peak_rss_mb"], 1),
            "peak_pss_with_workers_mb": round(run["peak_pss_with_workers_mb"], 1),
        }
    stage2["ratio"] = round(
        stage2["store"]["steps_per_s"] / stage2["student_only"]["steps_per_s"], 4
    )
    out["stage2"] = stage2

    # The store on disk, per image, and the formula's prediction of its file count.
    report = store_bytes_report(store)
    files, _ = _files_and_bytes(store)
    metadata = sum(1 for _ in store.rglob(METADATA_FILE))
    shards = int(copy["tars"])
    predicted = store_file_count(
        shards=shards, aug_fields=len(report["aug_fields_per_view"]), teachers=len(teachers)
    )
    out["store"] = {
        "bytes_per_image": round(report["total_bytes"] / count, 1),
        "files": files,
        "files_per_image": round(files / count, 4),
        "data_files_per_shard": round((files - metadata) / shards, 2),
        "files_predicted": predicted,
        "per_view_teacher_bytes": round(report["per_view_teacher"], 2),
    }
    shutil.rmtree(store)
    shutil.rmtree(data)
    info(f"scale x{times}: {json.dumps(out)}")
    return out


def loader_cpu_costs(
    work: Path, pool: Path, s: ScaleSettings, *, images: int = 32, views: int = 4
) -> dict[str, float]:
    """CPU ms (1 thread) to decode one full-size JPEG and to render one DeiT view at 224 px.

    The stage-one loader's work at ImageNet resolution, from a byte-copied shard of the pool's
    first ``images`` JPEGs (CPU time, not wall: robust to a busy machine's load).
    """
    from civt_pipe.pipeline.augment.blocks import iter_blocks, sample_and_render
    from civt_pipe.pipeline.augment.config import preset
    from civt_pipe.pipeline.data.reader import iter_shard

    source = link_prefix(pool, work / "images-cpu", images, classes=s.classes)
    shards = work / "shards-cpu"
    time_make_shards(source, shards, workers=1, shard_size=images)
    tar = next(shards.glob("*.tar"))
    aug = preset("deit", 224)
    # Each loop twice, the second timed: the first pays one-off set-up (libjpeg, kernels).
    for _ in range(2):
        start = time.process_time()
        samples = list(iter_shard(tar, channels=3))
        decode = time.process_time() - start
    for _ in range(2):
        start = time.process_time()
        for block in iter_blocks(samples, aug.mix_block):
            sample_and_render(block, s.seed, range(views), len(samples), aug)
        render = time.process_time() - start
    shutil.rmtree(source)
    shutil.rmtree(shards)
    return {
        "images": images,
        "views": views,
        "decode_cpu_ms_per_image": round(1000 * decode / images, 2),
        "render_cpu_ms_per_view_224": round(1000 * render / (images * views), 2),
    }


def teacher_gflops(
    archs: Sequence[str], *, image_size: int = 224, classes: int = 1000
) -> dict[str, float]:
    """FLOPs (10⁹, multiply and add counted apart) of one view through each model, counted."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from civt_pipe.pipeline.models.factory import create_model

    out = {}
    for arch in archs:
        model = create_model(arch, num_classes=classes, in_chans=3, image_size=image_size).eval()
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            model(torch.zeros(1, 3, image_size, image_size))
        out[arch] = round(counter.get_total_flops() / 1e9, 3)
    return out


def store_bytes_by_classes(work: Path, s: ScaleSettings) -> dict[str, Any]:
    """Bytes per (view, teacher), aug and other arrays of synthetic stores at C = 1,000 / 21,841."""
    from fidelity import synthetic_logits
    from store_bytes import store_bytes_report, write_synthetic_store

    out: dict[str, Any] = {}
    for classes in (1000, IMAGENET_21K_CLASSES):
        for k in (5, 10):
            z, _ = synthetic_logits(s.store_bytes_samples * 2, classes, seed=s.seed)
            path = work / f"bytes-c{classes}-k{k}.zarr"
            write_synthetic_store(
                path,
                teacher_logits={"t": z.reshape(s.store_bytes_samples, 2, classes)},
                k=k,
                num_views=2,
                shard_size=s.store_bytes_samples,
                seed=s.seed,
            )
            report = store_bytes_report(path)
            out[f"C{classes}_k{k}"] = {
                "per_view_teacher": round(report["per_view_teacher"], 2),
                "raw_per_view_teacher": report["raw_per_view_teacher"],
                "aug_per_view": round(report["aug_per_view"], 2),
                "aug_fields": len(report["aug_fields_per_view"]),
                "other_per_view": round(report["other_per_view"], 2),
            }
            shutil.rmtree(path)
    return out


def extrapolations(
    flops: Mapping[str, float],
    store_bytes: Mapping[str, Any],
    cpu_ms_per_image: float,
    loader: Mapping[str, float],
    k: int,
) -> dict[str, Any]:
    """:func:`extrapolate` for both :data:`PLANS` from this run's measured costs."""
    out = {}
    for plan in PLANS:
        measured = store_bytes[f"C{plan.num_classes}_k{k}"]
        costs = Costs(
            teacher_gflops=flops,
            gpu_tflops=A100_BF16_PEAK_TFLOPS * SUSTAINED_FRACTION,
            bytes_per_view_teacher=measured["per_view_teacher"],
            aug_bytes_per_view=measured["aug_per_view"],
            other_bytes_per_view=measured["other_per_view"],
            aug_fields=measured["aug_fields"],
            make_shards_cpu_ms_per_image=cpu_ms_per_image,
            decode_cpu_ms_per_image=loader["decode_cpu_ms_per_image"],
            render_cpu_ms_per_view=loader["render_cpu_ms_per_view_224"],
        )
        out[plan.name] = {"plan": asdict(plan), "k": k, **extrapolate(plan, costs)}
    return out


def run(s: ScaleSettings, work: Path) -> dict[str, Any]:
    """The whole scale bench; returns the JSON-able result."""
    import torch
    from compute import teachers_forward_fn

    torch.set_num_threads(s.threads)
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    settings = {**asdict(s), "resize_short": s.resize_short, "patch_size": s.student_patch_size}
    result: dict[str, Any] = {"settings": settings, "load_average_at_start": os.getloadavg()}
    largest = max(s.sizes) * s.base
    pool = work / "pool"
    t0 = time.perf_counter()
    folder = write_synthetic_folder(
        pool, largest, classes=s.classes, seed=s.seed, quality=s.jpeg_quality
    )
    folder["generate_seconds"] = round(time.perf_counter() - t0, 1)
    folder["vs_imagenet_mean_jpeg_bytes"] = round(
        folder["mean_jpeg_bytes"] / IMAGENET_MEAN_JPEG_BYTES, 3
    )
    result["folder"] = folder
    info(f"scale: folder {json.dumps(folder)}")

    teachers = _untrained_teachers(work, s)
    models = [t.model for t in load_teacher_models(teachers, num_classes=s.classes, channels=3)]
    g = torch.Generator().manual_seed(s.seed)
    batch = torch.rand(s.dump_batch_size, 3, s.image_size, s.image_size, generator=g)
    forward = teachers_forward_fn(models, batch)
    sizes = {f"{t}x": measure_size(work, pool, t, s, teachers, forward) for t in s.sizes}
    result["sizes"] = sizes
    result["memory_max_over_min"] = {
        stage: round(max(v) / min(v), 3)
        for stage, v in (
            ("stage1", [r["stage1"]["peak_rss_mb"] for r in sizes.values()]),
            ("stage2", [r["stage2"]["store"]["peak_rss_mb"] for r in sizes.values()]),
        )
    }
    result["ratios_median"] = {
        "stage1_vs_teacher_forward": statistics.median(
            r["stage1"]["ratio"] for r in sizes.values()
        ),
        "stage2_vs_student_only": statistics.median(r["stage2"]["ratio"] for r in sizes.values()),
    }

    flops = teacher_gflops(IMAGENET_TEACHERS)
    store_bytes = store_bytes_by_classes(work, s)
    loader = loader_cpu_costs(work, pool, s, images=min(32, largest))
    top = sizes[f"{max(s.sizes)}x"]["make_shards"]["cpu_ms_per_image"]["1"]
    result["teacher_gflops_224"] = flops
    result["store_bytes_by_classes"] = store_bytes
    result["loader_cpu_costs"] = loader
    result["extrapolation"] = {
        f"k{k}": extrapolations(flops, store_bytes, top, loader, k) for k in (5, 10)
    }
    result["assumptions"] = {
        "gpu": "A100",
        "bf16_peak_tflops": A100_BF16_PEAK_TFLOPS,
        "sustained_fraction": SUSTAINED_FRACTION,
        "views": PLANS[0].views,
        "shard_size": PLANS[0].shard_size,
    }
    result["load_average_at_end"] = os.getloadavg()
    result["total_seconds"] = round(time.perf_counter() - start, 1)
    return result


def settings_from_args(args: argparse.Namespace) -> ScaleSettings:
    """The run's settings: ``--quick`` or the defaults, then --base, --teachers, --sizes."""
    s = QUICK if args.quick else ScaleSettings()
    if args.base is not None:
        s = replace(s, base=args.base)
    if args.teachers is not None:
        s = replace(s, teachers=tuple(args.teachers.split(",")))
    if args.sizes is not None:
        s = replace(s, sizes=tuple(args.sizes))
    for name in ("image_size", "views", "dump_batch_size"):
        if getattr(args, name) is not None:
            s = replace(s, **{name: getattr(args, name)})
    return s


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of this bench (``bench/run.py --full`` runs it with its own settings)."""
    parser.add_argument("--base", type=int, help="images at 1× [default: 32; --quick 8]")
    parser.add_argument("--teachers", help="comma-separated teacher presets [cnn-nano,inn-nano]")
    parser.add_argument("--sizes", type=int, nargs="+", help="multiples of --base [1 4 16]")
    parser.add_argument("--image-size", type=int, help="views' side in px [32]")
    parser.add_argument("--views", type=int, help="views per image V [1]")
    parser.add_argument("--dump-batch-size", type=int, help="views per teacher forward [128]")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="base 8 (16× = 128 images)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--work", type=Path, help="keep the files here (default: temp)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    os.environ.setdefault("CIVT_PIPE_NO_PROGRESS", "1")
    s = settings_from_args(args)
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        result = run(s, args.work)
    else:
        with tempfile.TemporaryDirectory(prefix="civt-scale-") as tmp:
            result = run(s, Path(tmp))
    result["command"] = "python bench/scale.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print(json.dumps(result, indent=2, default=str), file=sys.stderr)


if __name__ == "__main__":
    main()
