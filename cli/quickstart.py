"""``civt-pipe quickstart``: the whole pipeline on the built-in digits, ending in a table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def quickstart_command(
    out: Annotated[
        Path, typer.Option("--out", help="Working directory (re-run into it to resume).")
    ] = Path("quickstart"),
    epochs: Annotated[
        int, typer.Option(help="Student epochs, for CivT and the baseline alike.", min=1)
    ] = 30,
    teacher_epochs: Annotated[int, typer.Option(help="Epochs of each teacher.", min=1)] = 10,
    views: Annotated[int, typer.Option(help="Stored augmented views per image.", min=1)] = 10,
    topk: Annotated[int, typer.Option(help="Teacher logits kept per view.", min=1)] = 5,
    lr: Annotated[float, typer.Option(help="Student peak learning rate.")] = 2e-3,
    seed: Annotated[int, typer.Option(help="Seed of teachers, views and students.", min=0)] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    overwrite: Annotated[
        bool, typer.Option(help="Start afresh: remove an earlier quickstart's files in --out.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the results as one JSON object.")
    ] = False,
) -> None:
    """Make digits shards, train a CNN and an involution teacher, dump their logits, train CivT
    from the store and a no-distillation baseline, and compare them on the test split.

    Finished steps in --out are reused, so an interrupted quickstart resumes when re-run.
    """
    from ..pipeline.workflows.quickstart import QuickstartConfig, print_results, run_quickstart
    from .common import emit_json

    result = run_quickstart(
        QuickstartConfig(
            out=out,
            epochs=epochs,
            teacher_epochs=teacher_epochs,
            views=views,
            topk=topk,
            lr=lr,
            seed=seed,
            device=device,
            overwrite=overwrite,
        )
    )
    print_results(result)
    if as_json:
        emit_json(result)
