"""``make-shards folder:`` speed: images/s with 1 and 2 worker processes on a synthetic folder.

The folder is ImageNet-like in what costs time: JPEGs (quality 90) of 256–500 px per side,
structured pictures (gradients, shapes, soft texture) rather than white noise, so that encoded
sizes and decode times resemble photographs'. Each setting writes into a fresh directory;
``--repeats`` runs alternate the settings and the median is reported, with the CPU time per
image (this process and its workers) and the load average: on a busy machine a second worker
only helps when a core is free.

    python bench/make_shards_speed.py --images 300 --workers 1 2 --json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A uint8 RGB picture: a colour gradient, a few filled shapes and low-frequency texture."""
    from PIL import Image, ImageDraw, ImageFilter

    y = np.linspace(0.0, 1.0, height)[:, None, None]
    x = np.linspace(0.0, 1.0, width)[None, :, None]
    start, end, tilt = rng.uniform(0, 255, (3, 3))
    base = start + (end - start) * y + (tilt - 128) * 0.5 * x
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 9))):
        x0, x1 = sorted(rng.integers(0, width, 2).tolist())
        y0, y1 = sorted(rng.integers(0, height, 2).tolist())
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        box = (x0, y0, x1 + 8, y1 + 8)
        if rng.random() < 0.5:
            draw.ellipse(box, fill=colour)
        else:
            draw.rectangle(box, fill=colour)
    # Texture: coarse noise blown up and blurred (photographs have no pixel-level white noise).
    coarse = rng.normal(0, 18, (height // 8 + 1, width // 8 + 1, 3))
    texture = Image.fromarray(np.clip(coarse + 128, 0, 255).astype(np.uint8), "RGB")
    texture = texture.resize((width, height), Image.Resampling.BILINEAR)
    texture = texture.filter(ImageFilter.GaussianBlur(2))
    mixed = np.asarray(image, dtype=np.int16) + np.asarray(texture, dtype=np.int16) - 128
    return np.clip(mixed, 0, 255).astype(np.uint8)


def synthetic_folder(
    root: Path, *, classes: int, per_class: int, seed: int = 0, quality: int = 90
) -> Path:
    """``root/class_NNN/img_NNNNN.JPEG`` files of 256–500 px per side; returns ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        class_dir = root / f"class_{c:03d}"
        class_dir.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            height, width = (int(v) for v in rng.integers(256, 501, 2))
            pixels = synthetic_image(rng, height, width)
            Image.fromarray(pixels).save(class_dir / f"img_{i:05d}.JPEG", quality=quality)
    return root


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the worker processes)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def time_make_shards(
    source: Path, out: Path, *, workers: int, shard_size: int, resize_short: int | None = None
) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one ``make_shards`` run into a fresh ``out``."""
    from civt_pipe.pipeline.data.make_shards import MakeShardsConfig, make_shards

    shutil.rmtree(out, ignore_errors=True)
    cfg = MakeShardsConfig(
        source=f"folder:{source}",
        out_dir=out,
        shard_size=shard_size,
        resize_short=resize_short,
        workers=workers,
    )
    start, cpu = time.perf_counter(), _cpu_seconds()
    make_shards(cfg)
    return time.perf_counter() - start, _cpu_seconds() - cpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300, help="Images in the folder.")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--shard-size", type=int, default=25)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="Keep the folder here.")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="make-shards-speed-"))
    source = work / "images"
    per_class = max(1, args.images // args.classes)
    if not source.exists():
        synthetic_folder(source, classes=args.classes, per_class=per_class)
    count = per_class * args.classes
    folder_bytes = sum(p.stat().st_size for p in source.rglob("*.JPEG"))
    seconds: dict[int, list[float]] = {w: [] for w in args.workers}
    cpu: dict[int, list[float]] = {w: [] for w in args.workers}
    load_before = os.getloadavg()[0]
    for _ in range(args.repeats):
        for workers in args.workers:
            out = work / f"shards-w{workers}"
            wall, used = time_make_shards(source, out, workers=workers, shard_size=args.shard_size)
            seconds[workers].append(wall)
            cpu[workers].append(used)
    result = {
        "images": count,
        "mean_jpeg_bytes": round(folder_bytes / count),
        "shard_size": args.shard_size,
        "images_per_s": {
            str(w): round(count / statistics.median(s), 1) for w, s in seconds.items()
        },
        # CPU per image, worker start-up included: the cost to extrapolate from on idle cores.
        "cpu_ms_per_image": {
            str(w): round(1000 * statistics.median(c) / count, 2) for w, c in cpu.items()
        },
        "seconds": {str(w): [round(v, 2) for v in s] for w, s in seconds.items()},
        "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "cpus": os.cpu_count(),
    }
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2), file=sys.stderr)


if __name__ == "__main__":
    main()
