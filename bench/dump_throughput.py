"""How close dump-logits comes to the teachers' own speed (issue 5's bench; not a test).

Runs ``dump-logits`` once on the built-in digits (two untrained nano teachers, a CNN and an
INN, at the image size given), then times the same teachers' forward passes alone, same batch
size, on the same views already rendered and held in memory. Prints one JSON object:

    {"images_per_s_dump": ..., "images_per_s_teacher_forward": ..., "ratio": ...}

An image counts once whatever V is (both sides process V views per image). The goal is
ratio >= 0.8: decoding, augmentation and writing hidden behind the forward passes.

Usage: .venv/bin/python bench/dump_throughput.py [--views 4] [--batch-size 256] [--workers W]
[--threads T] (W and T default to dump-logits' own defaults)
"""

# ruff: noqa: E402  (OpenMP's wait policy is set before torch loads, as the CLI does)
from __future__ import annotations

from civt_pipe.pipeline.runtime.openmp import set_openmp_defaults

set_openmp_defaults()  # the bench measures what civt-pipe runs with

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=None, help="default: dump-logits'")
    parser.add_argument("--threads", type=int, default=None, help="default: dump-logits'")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--teachers", default="cnn-nano,inn-nano")
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("CIVT_PIPE_NO_PROGRESS", "1")

    from civt_pipe.pipeline.augment.blocks import iter_blocks, sample_and_render
    from civt_pipe.pipeline.augment.config import AugmentConfig
    from civt_pipe.pipeline.data.make_shards import MakeShardsConfig, make_shards
    from civt_pipe.pipeline.data.reader import iter_shard
    from civt_pipe.pipeline.data.shard_set import resolve_shards
    from civt_pipe.pipeline.models.checkpoint import (
        make_checkpoint,
        model_from_checkpoint,
        save_checkpoint,
    )
    from civt_pipe.pipeline.models.factory import create_model
    from civt_pipe.pipeline.stages.dump.run import DumpConfig, TeacherSpec, run_dump
    from civt_pipe.stores.logit_store import LogitStore
    from civt_pipe.stores.topk import TopKLogits

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="civt-dump-bench-"))
    data = work / "train"
    if not (data / "index.json").exists():
        make_shards(MakeShardsConfig(source="digits", out_dir=data, shard_size=200))
    shards = resolve_shards(data)
    teachers = []
    for i, arch in enumerate(args.teachers.split(",")):
        ckpt = work / f"t{i}.pt"
        torch.manual_seed(i)
        model = create_model(
            arch,
            num_classes=shards.num_classes,
            in_chans=shards.channels,
            image_size=args.image_size,
        )
        save_checkpoint(ckpt, make_checkpoint(model))
        teachers.append(TeacherSpec(name=f"t{i}", arch=arch, checkpoint=ckpt))

    out = work / "store.zarr"
    summary = run_dump(
        DumpConfig(
            data=str(data),
            teachers=tuple(teachers),
            out=out,
            views=args.views,
            topk=5,
            batch_size=args.batch_size,
            workers=args.workers,
            threads=args.threads,
            device="cpu",
            overwrite=True,
            progress=False,
        )
    )
    dump_rate = summary["images_written"] / summary["seconds"]

    # The same views, rendered up front and kept in memory: the teachers' work alone.
    aug = AugmentConfig.from_dict(LogitStore.open(out).user_attrs["augment"])
    rendered = []
    for path in shards.paths:
        samples = list(iter_shard(path, channels=shards.channels))
        for block in iter_blocks(samples, aug.mix_block):
            r = sample_and_render(block, 0, range(args.views), len(samples), aug)
            rendered.append(r.views.reshape(-1, *r.views.shape[2:]))
    views = torch.cat(rendered)
    models = [model_from_checkpoint(t.checkpoint, device="cpu")[0] for t in teachers]

    def forward_rate(threads: int) -> float:
        torch.set_num_threads(threads)
        start = time.perf_counter()
        with torch.inference_mode():
            for lo in range(0, len(views), args.batch_size):
                batch = views[lo : lo + args.batch_size]
                for model in models:
                    TopKLogits.from_logits(model(batch), 5)
        return shards.num_samples / (time.perf_counter() - start)

    # The teachers alone, with one thread and with every core; the stricter (faster) of the two
    # is the baseline.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rates = {f"threads_{n}": forward_rate(n) for n in sorted({1, cores or 1})}
    best = max(rates.values())
    json.dump(
        {
            "images_per_s_dump": round(dump_rate, 1),
            "images_per_s_teacher_forward": round(best, 1),
            "ratio": round(dump_rate / best, 3),
            "teacher_forward_by_threads": {k: round(v, 1) for k, v in rates.items()},
            "threads": args.threads,
            "images": shards.num_samples,
            "views": args.views,
            "batch_size": args.batch_size,
            "workers": args.workers,
            "teachers": args.teachers,
            "image_size": args.image_size,
        },
        sys.stdout,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
