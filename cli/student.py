"""``civt-pipe train-student``: stage two — train a student against stored (or live) teachers."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer


class VerifyReplay(str, Enum):
    all = "all"
    sample = "sample"
    off = "off"


class TokenMode(str, Enum):
    per_teacher = "per-teacher"
    shared = "shared"
    none = "none"


def train_student_command(
    data: Annotated[str, typer.Option("--data", help="Training shards: directory or pattern.")],
    out: Annotated[str, typer.Option("--out", help="Run directory (last.pt, final.pt, metrics).")],
    store: Annotated[
        str | None, typer.Option("--store", help="Logit store dumped from the same shards.")
    ] = None,
    model: Annotated[
        str, typer.Option("--model", help="Student preset (civt-nano, civt-ti...).")
    ] = ("civt-nano"),
    epochs: Annotated[int, typer.Option(help="Epochs; epoch e uses view e mod V.", min=1)] = 10,
    batch_size: Annotated[int, typer.Option(help="Images per step and rank.", min=1)] = 64,
    lr: Annotated[
        float | None, typer.Option(help="Peak learning rate [default: 1e-3 × global batch / 512].")
    ] = None,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.", min=0)] = 0.05,
    warmup_epochs: Annotated[
        float, typer.Option(help="Linear warm-up (at most a fifth of the run).", min=0)
    ] = 5.0,
    tau: Annotated[
        list[str] | None,
        typer.Option("--tau", help="Temperature: T for all teachers, or NAME=T (repeatable)."),
    ] = None,
    lambda_: Annotated[
        list[str] | None,
        typer.Option("--lambda", help="KL weight: L for all teachers, or NAME=L (repeatable)."),
    ] = None,
    lambda_cls: Annotated[float, typer.Option(help="Class-token cross-entropy weight.")] = 1.0,
    label_smoothing: Annotated[float, typer.Option(help="Label smoothing of the CE term.")] = 0.0,
    token_mode: Annotated[
        TokenMode, typer.Option(help="One token per teacher, one shared token, or none.")
    ] = TokenMode.per_teacher,
    patch_size: Annotated[
        int | None, typer.Option(help="Patch size [default: preset's].", min=1)
    ] = None,
    val: Annotated[
        str | None, typer.Option("--val", help="Validation shards, evaluated every epoch.")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from last.pt.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Start over in a used --out.")] = False,
    save_every: Annotated[
        int, typer.Option(help="Also checkpoint every N steps (0: epoch ends only).", min=0)
    ] = 0,
    verify_replay: Annotated[
        VerifyReplay,
        typer.Option(help="Check replayed views against stored digests: all, sample, off."),
    ] = VerifyReplay.sample,
    teacher: Annotated[
        list[str] | None,
        typer.Option("--teacher", help="Online mode (no --store): NAME=ARCH:CHECKPOINT."),
    ] = None,
    views: Annotated[int, typer.Option(help="Online mode: distinct views V.", min=1)] = 1,
    aug: Annotated[str, typer.Option(help="Online mode: augmentation preset.")] = "auto",
    image_size: Annotated[
        int | None, typer.Option(help="Online mode: view size [default: the teachers'].")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed [store mode: the store's; online mode: 0].", min=0)
    ] = None,
    workers: Annotated[int, typer.Option(help="DataLoader processes (0: none).", min=0)] = 0,
    threads: Annotated[
        int | None,
        typer.Option(help="Torch CPU threads [default: free cores minus workers].", min=1),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON object.")
    ] = False,
) -> None:
    """Train a CivT student on the shards with the store's replayed views and stored logits.

    Killed at any point, the same command with --resume finishes with the same weights. Under
    torchrun it trains with DDP (equal steps on every rank).
    """
    from ..pipeline.stages.student import (
        StudentTrainConfig,
        parse_per_teacher,
        train_student,
    )
    from .common import emit_json

    tau_default, taus = parse_per_teacher(tau or [], "--tau")
    lambda_default, lambdas = parse_per_teacher(lambda_ or [], "--lambda")
    cfg = StudentTrainConfig(
        data=data,
        out=out,
        store=store,
        model=model,
        teachers=tuple(teacher or ()),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup_epochs=warmup_epochs,
        tau=tau_default,
        taus=taus,
        lambda_kd=lambda_default,
        lambdas=lambdas,
        lambda_cls=lambda_cls,
        label_smoothing=label_smoothing,
        token_mode=token_mode.value,
        patch_size=patch_size,
        val=val,
        resume=resume,
        overwrite=overwrite,
        save_every=save_every,
        verify_replay=verify_replay.value,
        views=views,
        aug=aug,
        image_size=image_size,
        seed=seed,
        workers=workers,
        threads=threads,
        device=device,
    )
    summary = train_student(cfg)
    if as_json and summary.get("rank", 0) == 0:
        emit_json(summary)
