"""The pipeline's own stages, run in-process on digits for the benchmark.

Everything goes through the stages' public functions (``make_shards``, ``train_teacher``,
``run_dump``, ``train_student``), so the benchmark measures the code users run.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TEACHERS = (("cnn", "cnn-nano"), ("inn", "inn-nano"))
"""The two light teachers with different inductive biases (convolution, involution)."""
STUDENT = "civt-nano"


@dataclass(frozen=True, slots=True)
class Teacher:
    """A trained teacher checkpoint, as ``--teacher NAME=ARCH:CKPT`` names it."""

    name: str
    arch: str
    checkpoint: Path

    @property
    def spec(self) -> str:
        return f"{self.name}={self.arch}:{self.checkpoint}"


def make_digits(root: Path) -> tuple[Path, Path]:
    """Digits train and test shards under ``root`` (``make-shards digits``)."""
    from civt_pipe.pipeline.data.make_shards import MakeShardsConfig, make_shards

    out = []
    for split in ("train", "test"):
        path = root / split
        make_shards(MakeShardsConfig(source="digits", out_dir=path, split=split, overwrite=True))
        out.append(path)
    return out[0], out[1]


def replicate_shards(data: Path, out: Path, times: int) -> Path:
    """Shards holding every image of ``data`` ``times`` times, under distinct keys.

    Writes the images as PNG class folders and runs ``make-shards folder:``, so the copy is a
    dataset like any other (its own index, mean/std, fingerprint).
    """
    from PIL import Image

    from civt_pipe.pipeline.data.make_shards import MakeShardsConfig, make_shards
    from civt_pipe.pipeline.data.reader import iter_samples
    from civt_pipe.pipeline.data.shard_set import resolve_shards

    shard_set = resolve_shards(str(data))
    folder = out.with_name(out.name + "-images") / "train"
    for sample in iter_samples(shard_set):
        assert sample.image is not None  # make-shards output always decodes
        pixels = sample.image.permute(1, 2, 0).numpy()
        pixels = pixels[..., 0] if pixels.shape[-1] == 1 else pixels
        class_dir = folder / shard_set.class_names[sample.label]
        class_dir.mkdir(parents=True, exist_ok=True)
        for rep in range(times):
            Image.fromarray(pixels).save(class_dir / f"r{rep}_{sample.key}.png")
    make_shards(
        MakeShardsConfig(
            source=f"folder:{folder.parent}", out_dir=out, split="train", overwrite=True
        )
    )
    return out


def train_teachers(root: Path, train: Path, *, epochs: int, workers: int) -> list[Teacher]:
    """``train-teacher`` for each nano teacher; returns their checkpoints."""
    from civt_pipe.pipeline.stages.teacher.config import TeacherTrainConfig
    from civt_pipe.pipeline.stages.teacher.run import train_teacher

    teachers = []
    for name, arch in TEACHERS:
        ckpt = root / f"{name}.pt"
        train_teacher(
            TeacherTrainConfig(
                arch=arch,
                data=str(train),
                out=ckpt,
                epochs=epochs,
                workers=workers,
                overwrite=True,
            )
        )
        teachers.append(Teacher(name, arch, ckpt))
    return teachers


def dump_config_kwargs(
    data: Path,
    teachers: Sequence[Teacher],
    out: Path,
    *,
    views: int,
    topk: int,
    seed: int,
    batch_size: int,
    workers: int | None,
    threads: int | None = None,
) -> dict[str, Any]:
    """JSON-able keyword arguments of ``DumpConfig`` (also passed to the RSS subprocess)."""
    return {
        "data": str(data),
        "teachers": [t.spec for t in teachers],
        "out": str(out),
        "views": views,
        "topk": topk,
        "seed": seed,
        "batch_size": batch_size,
        "workers": workers,
        "threads": threads,
        "overwrite": True,
        "progress": False,
    }


def run_dump_from_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``run_dump`` from :func:`dump_config_kwargs` output; returns its summary."""
    from civt_pipe.pipeline.stages.dump.run import DumpConfig, TeacherSpec, run_dump

    args = dict(kwargs)
    args["teachers"] = tuple(TeacherSpec.parse(s) for s in args["teachers"])
    args["out"] = Path(args["out"])
    return run_dump(DumpConfig(**args))


def student_config_kwargs(
    data: Path,
    out: Path,
    *,
    store: Path | None = None,
    teachers: Sequence[Teacher] = (),
    token_mode: str = "per-teacher",
    epochs: int,
    batch_size: int,
    workers: int,
    seed: int,
    views: int,
    val: Path | None = None,
    lr: float | None = None,
) -> dict[str, Any]:
    """JSON-able keyword arguments of ``StudentTrainConfig`` (store or online mode)."""
    kwargs: dict[str, Any] = {
        "data": str(data),
        "out": str(out),
        "model": STUDENT,
        "token_mode": token_mode,
        "epochs": epochs,
        "batch_size": batch_size,
        "workers": workers,
        "seed": seed,
        "overwrite": True,
        "progress": False,
        "val": str(val) if val is not None else None,
        "lr": lr,
    }
    if store is not None:
        kwargs["store"] = str(store)
    else:
        kwargs["teachers"] = [t.spec for t in teachers]
        kwargs["views"] = views
    return kwargs


def run_student_from_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``train_student`` from :func:`student_config_kwargs` output; returns its summary."""
    from civt_pipe.pipeline.stages.student.config import StudentTrainConfig
    from civt_pipe.pipeline.stages.student.run import train_student

    args = dict(kwargs)
    args["teachers"] = tuple(args.get("teachers", ()))
    return train_student(StudentTrainConfig(**args))


def step_records(metrics_file: Path) -> list[dict[str, Any]]:
    """The ``"kind": "step"`` records of a run's ``metrics.jsonl``."""
    lines = metrics_file.read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return [r for r in records if r.get("kind") == "step"]


def median_steps_per_s(records: Iterable[Mapping[str, Any]], batch_size: int) -> float:
    """Median steps/s of a run from its per-step ``images_per_s`` (one batch per step).

    Each record's rate covers the wall time since the previous step ended, data wait
    included; the median drops the first step of an epoch (loader start-up) and stray stalls.
    """
    rates = [float(r["images_per_s"]) / batch_size for r in records]
    if not rates:
        raise ValueError("the run logged no steps")
    return statistics.median(rates)


def load_teacher_models(teachers: Sequence[Teacher], *, num_classes: int, channels: int) -> list:
    """The teachers as ``dump-logits`` loads them (eval mode, CPU): ``LoadedTeacher`` each."""
    import torch

    from civt_pipe.pipeline.models.teachers import TeacherSpec, load_teachers

    specs = [TeacherSpec.parse(t.spec) for t in teachers]
    return load_teachers(specs, torch.device("cpu"), num_classes=num_classes, channels=channels)


def teacher_view_logits(
    data: Path, store: Path, teachers: Sequence[Teacher], *, max_samples: int
) -> dict[str, Any]:
    """Each teacher's full float32 logits ``[n·V, C]`` on the views a store was dumped from.

    The views are re-drawn with the store's own seed and augmentation (the same keyed draws
    as ``dump-logits``), for up to ``max_samples`` samples of the first shards.
    """
    import torch

    from civt_pipe.pipeline.augment.blocks import iter_blocks, sample_and_render
    from civt_pipe.pipeline.augment.config import AugmentConfig
    from civt_pipe.pipeline.data.reader import iter_samples
    from civt_pipe.pipeline.data.shard_set import resolve_shards
    from civt_pipe.stores.logit_store import LogitStore

    logit_store = LogitStore.open(store)
    attrs = logit_store.user_attrs
    aug = AugmentConfig.from_dict(dict(attrs["augment"]))
    seed = int(attrs["seed"])
    views = list(range(logit_store.num_views))
    shard_set = resolve_shards(str(data))
    counts = {s.name: s.num_samples for s in shard_set.index.shards}
    models = load_teacher_models(
        teachers, num_classes=shard_set.num_classes, channels=shard_set.channels
    )
    out: dict[str, list[torch.Tensor]] = {t.info.name: [] for t in models}
    seen = 0
    with torch.inference_mode():
        for name, count in counts.items():
            # Shard by shard: mix blocks never straddle shards.
            for block in iter_blocks(iter_samples(shard_set, shards=[name]), aug.mix_block):
                if seen >= max_samples:
                    break
                rendered = sample_and_render(block, seed, views, count, aug)
                flat = rendered.views.reshape(-1, *rendered.views.shape[2:])
                for t in models:
                    out[t.info.name].append(t.model(flat).float())
                seen += len(block)
    return {name: torch.cat(parts) for name, parts in out.items()}
