"""The prepared GPU check of ``--render-device``: ``python bench/gpu_check.py [--json]``.

On one CUDA GPU (under 10 minutes with the defaults) it:

1. makes JPEG shards of synthetic colour images (``make-shards folder:``, JPEG bytes copied);
2. dumps them with two untrained nano teachers, views rendered on the CPU (``--render-device
   cpu``, one worker process) and on the GPU (``--render-device cuda --decoder nvjpeg``,
   ``--workers 0``: decoded and rendered on the device), and reports stage one's views/s for
   each;
3. replays the GPU store in ``train-student`` with ``--verify-replay all`` (every view's digest
   checked against the one stage one stored: a mismatch stops the run) and reports its steps/s;
4. checks that replaying the GPU store with ``--render-device cpu`` is refused.

Without CUDA the same script runs the CPU rows (the CPU dump, its replay with every digest
checked) and skips each CUDA row with a line saying so; the test suite runs it that way.
Progress goes to stderr, ``--json`` prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


@dataclass(frozen=True, slots=True)
class GpuCheckSettings:
    images: int = 2048
    classes: int = 4
    image_size: int = 64
    """Teachers' and student's input side (views are rendered at this size)."""
    source_size: tuple[int, int] = (96, 160)
    """Range of the synthetic JPEGs' sides."""
    views: int = 2
    dump_batch_size: int = 256
    student_batch_size: int = 64
    shard_size: int = 512
    seed: int = 0


SMOKE = GpuCheckSettings(
    images=24,
    classes=2,
    image_size=16,
    source_size=(20, 28),
    views=1,
    dump_batch_size=16,
    student_batch_size=8,
    shard_size=12,
)
"""The suite's settings (CPU, seconds)."""


def _log(message: str) -> None:
    print(f"gpu_check: {message}", file=sys.stderr, flush=True)


def make_jpeg_shards(root: Path, s: GpuCheckSettings) -> Path:
    """Synthetic colour JPEGs in class folders, written as shards (JPEG bytes copied)."""
    import numpy as np
    from PIL import Image

    from civt_pipe.pipeline.data.make_shards import MakeShardsConfig, make_shards

    rng = np.random.default_rng(s.seed)
    folder = root / "images"
    lo, hi = s.source_size
    for i in range(s.images):
        label = i % s.classes
        h, w = (int(v) for v in rng.integers(lo, hi + 1, size=2))
        # A class-tinted gradient plus noise: enough structure for resampling to matter.
        base = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
        tint = np.array([(label * 67) % 256, (label * 131) % 256, (label * 197) % 256])
        pixels = 0.5 * base + 0.5 * tint + rng.normal(0, 20, (h, w, 3))
        out = folder / f"c{label}"
        out.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
        (out / f"im{i:06d}.jpg").write_bytes(buffer.getvalue())
    data = root / "train"
    make_shards(
        MakeShardsConfig(
            source=f"folder:{folder}", out_dir=data, shard_size=s.shard_size, overwrite=True
        )
    )
    return data


def make_teachers(root: Path, s: GpuCheckSettings) -> tuple[str, ...]:
    """Two untrained nano teachers (a CNN and an involution net), as ``--teacher`` specs."""
    import torch

    from civt_pipe.pipeline.models.checkpoint import make_checkpoint, save_checkpoint
    from civt_pipe.pipeline.models.factory import create_model

    specs = []
    for i, (name, arch) in enumerate((("cnn", "cnn-nano"), ("inn", "inn-nano"))):
        torch.manual_seed(s.seed + i)
        model = create_model(arch, num_classes=s.classes, in_chans=3, image_size=s.image_size)
        path = root / f"{name}.pt"
        save_checkpoint(path, make_checkpoint(model))
        specs.append(f"{name}={arch}:{path}")
    return tuple(specs)


def dump(
    data: Path, teachers: tuple[str, ...], out: Path, s: GpuCheckSettings, **options: Any
) -> dict[str, Any]:
    """One ``dump-logits`` run; its summary plus ``views_per_s``."""
    from civt_pipe.pipeline.stages.dump.run import DumpConfig, TeacherSpec, run_dump

    summary = run_dump(
        DumpConfig(
            data=str(data),
            teachers=tuple(TeacherSpec.parse(t) for t in teachers),
            out=str(out),
            views=s.views,
            topk=min(5, s.classes),
            seed=s.seed,
            batch_size=s.dump_batch_size,
            image_size=s.image_size,
            overwrite=True,
            progress=False,
            **options,
        )
    )
    seconds = float(summary["seconds"])
    summary["views_per_s"] = round(summary["views_written"] / seconds, 1) if seconds else None
    return summary


def replay(data: Path, store: Path, out: Path, s: GpuCheckSettings, **options: Any) -> float:
    """``train-student`` over every stored view with every digest checked; median steps/s."""
    from stages import median_steps_per_s, step_records

    from civt_pipe.pipeline.stages.student.config import StudentTrainConfig
    from civt_pipe.pipeline.stages.student.run import train_student

    train_student(
        StudentTrainConfig(
            data=str(data),
            store=str(store),
            out=str(out),
            model="civt-nano",
            epochs=s.views,  # epoch e replays view e mod V: every stored view once
            batch_size=s.student_batch_size,
            verify_replay="all",
            log_every=1,
            overwrite=True,
            progress=False,
            **options,
        )
    )
    return round(median_steps_per_s(step_records(out / "metrics.jsonl"), s.student_batch_size), 3)


def run(s: GpuCheckSettings, work: Path) -> dict[str, Any]:
    """Every row; CUDA rows are skipped (with the reason) when CUDA is not available."""
    import torch

    from civt_pipe.pipeline.runtime.errors import UserError

    cuda = torch.cuda.is_available()
    result: dict[str, Any] = {
        "settings": asdict(s),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "cuda": cuda,
        "rows": {},
        "skipped": {},
    }
    rows: dict[str, Any] = result["rows"]
    started = time.perf_counter()

    def row(name: str, fn: Callable[[], Any]) -> None:
        _log(f"{name} ...")
        rows[name] = fn()
        _log(f"{name}: {rows[name]}")

    data = make_jpeg_shards(work, s)
    teachers = make_teachers(work, s)
    cpu_store = work / "cpu-render.zarr"
    # The CPU renderer as stage one runs it by default: one worker process beside the forward.
    row(
        "stage1_cpu_render_views_per_s",
        lambda: dump(data, teachers, cpu_store, s, render_device="cpu", workers=1)["views_per_s"],
    )
    row(
        "student_replay_cpu_render_steps_per_s",
        lambda: replay(data, cpu_store, work / "run-cpu", s, render_device="cpu", workers=1),
    )
    cuda_rows = (
        "stage1_gpu_render_views_per_s",
        "gpu_over_cpu_render",
        "student_replay_gpu_render_steps_per_s",
        "replay_digests_match",
        "cpu_replay_of_gpu_store_refused",
    )
    if not cuda:
        reason = "CUDA is not available on this machine"
        for name in cuda_rows:
            result["skipped"][name] = reason
        _log(f"skipping {', '.join(cuda_rows)}: {reason} (run it on a machine with a CUDA GPU)")
    else:
        gpu_store = work / "gpu-render.zarr"
        row(
            "stage1_gpu_render_views_per_s",
            lambda: dump(
                data, teachers, gpu_store, s, render_device="cuda", decoder="nvjpeg", workers=0
            )["views_per_s"],
        )
        rows["gpu_over_cpu_render"] = round(
            rows["stage1_gpu_render_views_per_s"] / rows["stage1_cpu_render_views_per_s"], 3
        )
        # --verify-replay all: a single replayed view unlike its stored digest stops the run.
        row(
            "student_replay_gpu_render_steps_per_s",
            lambda: replay(data, gpu_store, work / "run-gpu", s, workers=0),
        )
        rows["replay_digests_match"] = True

        def refused() -> bool:
            try:
                replay(data, gpu_store, work / "run-refused", s, render_device="cpu", workers=0)
            except UserError as err:
                return "--render-device" in str(err)
            return False

        row("cpu_replay_of_gpu_store_refused", refused)
    result["cpu_replay_digests_match"] = True  # the CPU replay above checked every view
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["ok"] = bool(
        rows.get("replay_digests_match", True) and rows.get("cpu_replay_of_gpu_store_refused", True)
    )
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--work", type=Path, help="keep the shards and stores here")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (the test suite's)")
    parser.add_argument("--images", type=int, help="synthetic JPEGs (default 2048)")
    args = parser.parse_args(argv)
    os.environ.setdefault("CIVT_PIPE_NO_PROGRESS", "1")
    settings = SMOKE if args.smoke else GpuCheckSettings()
    if args.images is not None:
        settings = GpuCheckSettings(**{**asdict(settings), "images": args.images})
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        result = run(settings, args.work)
    else:
        with tempfile.TemporaryDirectory(prefix="civt-gpu-check-") as tmp:
            result = run(settings, Path(tmp))
    text = json.dumps(result, default=str)
    print(text if args.json else json.dumps(result, indent=2, default=str), file=sys.stdout)
    return result


if __name__ == "__main__":
    from civt_pipe.pipeline.runtime.openmp import set_openmp_defaults

    set_openmp_defaults()  # before torch loads, as the CLI does
    main()
