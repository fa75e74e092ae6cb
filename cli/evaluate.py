"""``civt-pipe evaluate``: top-1/top-5 accuracy of a teacher or student checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import emit_json


def evaluate_command(
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", help="Teacher or student checkpoint file.")
    ],
    data: Annotated[str, typer.Option("--data", help="Shards to evaluate on.")],
    batch_size: Annotated[int, typer.Option("--batch-size", help="Samples per batch.")] = 256,
    workers: Annotated[int, typer.Option("--workers", help="Data-loading processes.")] = 0,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads", help="Torch CPU threads (default: free cores minus workers).", min=1
        ),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    store: Annotated[
        Path | None,
        typer.Option(
            "--store", help="dump-logits store of these shards: also report KL to each teacher."
        ),
    ] = None,
    store_views: Annotated[
        int | None,
        typer.Option("--store-views", help="Use only the store's first N views (default all)."),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object on stdout.")
    ] = False,
) -> None:
    """Accuracy of every head of a checkpoint (students: cls, each teacher token, mean)."""
    from ..pipeline.stages.evaluate import EvaluateConfig, evaluate

    result = evaluate(
        EvaluateConfig(
            checkpoint=checkpoint,
            data=data,
            batch_size=batch_size,
            device=device,
            workers=workers,
            threads=threads,
            store=store,
            store_views=store_views,
        )
    )
    if json_output:
        emit_json(result)
        return
    from rich.table import Table

    from ..pipeline.runtime.console import console

    table = Table(title=f"{result['arch']} ({result['kind']}) on {result['num_samples']} samples")
    for column in ("head", "top-1", "top-5"):
        table.add_column(column, justify="left" if column == "head" else "right")
    for name, acc in result["heads"].items():
        table.add_row(name, f"{acc['top1']:.2%}", f"{acc['top5']:.2%}")
    console.print(table)
    if "kl_to_teachers" in result:
        kl = result["kl_to_teachers"]
        teachers = list(next(iter(kl.values())))
        kl_table = Table(title=f"KL(teacher ‖ head) on the views of {result['store']}")
        kl_table.add_column("head")
        for name in teachers:
            kl_table.add_column(name, justify="right")
        for head, row in kl.items():
            kl_table.add_row(head, *(f"{row[t]:.4f}" for t in teachers))
        console.print(kl_table)
