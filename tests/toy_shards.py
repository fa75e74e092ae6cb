"""A tiny learnable shard set for training and evaluation tests: three gray-level classes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from civt_pipe.pipeline.data.index import ShardIndex
from civt_pipe.pipeline.data.make_shards import MakeShardsConfig, make_shards
from civt_pipe.pipeline.models.checkpoint import make_checkpoint, save_checkpoint
from civt_pipe.pipeline.models.factory import create_model
from civt_pipe.pipeline.models.teacher_spec import TeacherSpec
from civt_pipe.pipeline.stages.dump.config import DumpConfig
from civt_pipe.pipeline.stages.dump.run import run_dump

LEVELS = {"dark": 30, "mid": 128, "bright": 225}
"""Mean pixel of each class; the shards list classes alphabetically: bright, dark, mid."""


def make_toy_shards(root: Path, split: str, per_class: int = 16, seed: int = 0) -> Path:
    """Three classes of 8×8 gray images told apart by brightness (learnable in a few steps)."""
    rng = np.random.default_rng(seed)
    folder = root / f"src-{split}"
    for name, level in LEVELS.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(level + rng.normal(0, 12, (8, 8)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / name / f"{i:03d}.png")
    out = root / split
    make_shards(
        MakeShardsConfig(
            source=f"folder:{folder}", out_dir=out, split=split, shard_size=20, format="png"
        )
    )
    return out


def subset_shards(src: Path, dst: Path, first: int, count: int) -> Path:
    """Copy shards ``first .. first + count - 1`` of the shard set ``src`` and their index to
    ``dst``: a smaller shard set of the same samples."""
    index = ShardIndex.load(src)
    names = [s.name for s in index.shards[first : first + count]]
    dst.mkdir()
    for name in names:
        (dst / name).write_bytes((src / name).read_bytes())
    index.subset(names).save(dst)
    return dst


def make_toy_teacher(path: Path, image_size: int = 8, seed: int = 0) -> Path:
    """An untrained ``cnn-nano`` checkpoint for the toy shards (3 classes, 1 channel)."""
    torch.manual_seed(seed)
    model = create_model("cnn-nano", num_classes=3, in_chans=1, image_size=image_size)
    save_checkpoint(path, make_checkpoint(model))
    return path


def dump_toy_store(data: Path, teacher: Path, out: Path, **options: Any) -> Path:
    """``dump-logits`` of ``data`` with the one ``cnn`` teacher (k = 3, in-process, no bars)."""
    settings: dict[str, Any] = dict(topk=3, workers=0, device="cpu", progress=False)
    settings.update(options)
    teachers = (TeacherSpec.parse(f"cnn=cnn-nano:{teacher}"),)
    run_dump(DumpConfig(data=str(data), teachers=teachers, out=out, **settings))
    return out


def train_toy_student(data: Path, store: Path, out: Path) -> Path:
    """One epoch of ``train-student`` from ``store`` (batch 8, no warm-up, no bars); the run dir."""
    from civt_pipe.pipeline.stages.student.config import StudentTrainConfig
    from civt_pipe.pipeline.stages.student.run import train_student

    train_student(
        StudentTrainConfig(
            data=str(data),
            store=str(store),
            out=str(out),
            epochs=1,
            batch_size=8,
            warmup_epochs=0,
            device="cpu",
            progress=False,
        )
    )
    return out
