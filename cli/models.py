"""``civt-pipe models``: the architectures you can train or load, with their sizes."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import emit_json


def models_command(
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object on stdout.")
    ] = False,
) -> None:
    """List architectures (teachers and students) with parameter counts at 1000 classes, 224 px."""
    from ..pipeline.models.factory import describe_models

    rows = describe_models()
    if json_output:
        emit_json({"models": rows, "num_classes": 1000, "image_size": 224})
        return
    from rich.table import Table

    from ..pipeline.runtime.console import console

    table = Table(title="civt-pipe models (parameters at 1000 classes, 224 px)")
    for column in ("name", "kind", "params", "description"):
        table.add_column(column, justify="right" if column == "params" else "left")
    for row in rows:
        table.add_row(row["name"], row["kind"], f"{row['params'] / 1e6:.2f} M", row["description"])
    console.print(table)
