"""``civt-pipe train-teacher``: train a CNN or involution teacher on shards."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import emit_json


def train_teacher_command(
    arch: Annotated[str, typer.Option("--arch", help="Teacher architecture (see `models`).")],
    data: Annotated[str, typer.Option("--data", help="Training shards: directory or pattern.")],
    out: Annotated[Path, typer.Option("--out", help="Checkpoint file to write.")],
    val: Annotated[
        str | None, typer.Option("--val", help="Validation shards, evaluated every epoch.")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option("--epochs", help="Epochs (default: the arch's recipe).")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Global batch size (default: recipe).")
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option("--lr", help="Peak learning rate (default: recipe rate × batch / 256)."),
    ] = None,
    optimizer: Annotated[
        str | None, typer.Option("--optimizer", help="sgd or adamw (default: recipe).")
    ] = None,
    weight_decay: Annotated[
        float | None, typer.Option("--weight-decay", help="Weight decay (default: recipe).")
    ] = None,
    warmup_epochs: Annotated[
        float | None, typer.Option("--warmup-epochs", help="Linear warm-up (default: recipe).")
    ] = None,
    label_smoothing: Annotated[
        float, typer.Option("--label-smoothing", help="Label smoothing of the loss.")
    ] = 0.1,
    image_size: Annotated[
        int | None,
        typer.Option("--image-size", help="Input side (default: 16 / native ≤ 64 px / 224)."),
    ] = None,
    min_scale: Annotated[
        float | None,
        typer.Option("--min-scale", help="Smallest crop area (default 0.08; 0.35 at ≤ 64 px)."),
    ] = None,
    hflip: Annotated[
        float | None,
        typer.Option("--hflip", help="Flip probability (default 0.5; 0 under 16 px)."),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option("--threads", help="Torch CPU threads (default: free cores minus workers)."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of weights, augmentation, order.")] = 0,
    workers: Annotated[
        int, typer.Option("--workers", help="Data-loading processes per rank (0: none).")
    ] = 1,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run saved in --out, if any.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing --out and its metrics.")
    ] = False,
    init: Annotated[
        Path | None,
        typer.Option("--init", help="Start from a torchvision weight file or our checkpoint."),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object on stdout.")
    ] = False,
) -> None:
    """Train a teacher (crop/flip, warm-up + cosine, label smoothing); writes CKPT, plus
    CKPT-stem.metrics.jsonl and CKPT-stem.config.json beside it. DDP under torchrun."""
    from ..pipeline.stages.teacher import TeacherTrainConfig, train_teacher

    result = train_teacher(
        TeacherTrainConfig(
            arch=arch,
            data=data,
            out=out,
            val=val,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            optimizer=optimizer,
            weight_decay=weight_decay,
            warmup_epochs=warmup_epochs,
            label_smoothing=label_smoothing,
            image_size=image_size,
            min_scale=min_scale,
            hflip=hflip,
            threads=threads,
            seed=seed,
            workers=workers,
            device=device,
            resume=resume,
            overwrite=overwrite,
            init=init,
        )
    )
    if json_output and result["rank"] == 0:  # under torchrun only rank 0 reports
        emit_json(result)
