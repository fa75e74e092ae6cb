"""``civt-pipe dump-logits``: stage one — every teacher on every augmented view, into a store."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer


class OnError(str, Enum):
    fail = "fail"
    skip = "skip"


def dump_logits_command(
    data: Annotated[str, typer.Option("--data", help="Shards: a directory or a brace pattern.")],
    teacher: Annotated[
        list[str],
        typer.Option(
            "--teacher",
            help="NAME=ARCH:CHECKPOINT, once per teacher (e.g. cnn=resnet18:cnn.pt).",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="The zarr logit store to write.")],
    views: Annotated[int, typer.Option(help="Augmented views per image (V).", min=1)] = 4,
    topk: Annotated[int, typer.Option(help="Logits kept per view and teacher (k).", min=1)] = 10,
    seed: Annotated[int, typer.Option(help="Augmentation seed.", min=0)] = 0,
    batch_size: Annotated[int, typer.Option(help="Views per teacher forward pass.", min=1)] = 256,
    workers: Annotated[
        int, typer.Option(help="DataLoader processes decoding and augmenting (0: none).", min=0)
    ] = 1,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    on_error: Annotated[
        OnError, typer.Option(help="An undecodable sample stops the dump or is skipped.")
    ] = OnError.fail,
    aug: Annotated[
        str,
        typer.Option(help="Augmentation preset: auto (small up to 32 px, else deit), deit, small."),
    ] = "auto",
    chunk_rows: Annotated[
        int | None, typer.Option(help="Store rows per chunk [default: one chunk per shard].")
    ] = None,
    image_size: Annotated[
        int | None,
        typer.Option(help="Input size for teachers given as bare torchvision weights.", min=4),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            help="CPU threads for the teachers [default: free cores minus workers].", min=1
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing store.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON object.")
    ] = False,
) -> None:
    """Draw V views per image, run every teacher on each, store top-k logits and view parameters.

    Killed at any point, the same command resumes and finishes only the missing shards. Under
    torchrun the shards are split over ranks.
    """
    from ..pipeline.stages.dump.run import DumpConfig, TeacherSpec, print_summary, run_dump
    from .common import emit_json

    cfg = DumpConfig(
        data=data,
        teachers=tuple(TeacherSpec.parse(t) for t in teacher),
        out=out,
        views=views,
        topk=topk,
        seed=seed,
        batch_size=batch_size,
        workers=workers,
        device=device,
        on_error=on_error.value,
        overwrite=overwrite,
        aug=aug,
        chunk_rows=chunk_rows,
        image_size=image_size,
        threads=threads,
    )
    summary = run_dump(cfg)
    if summary.get("rank", 0) == 0:
        print_summary(summary)
        if as_json:
            emit_json(summary)
