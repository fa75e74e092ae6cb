"""``civt-pipe inspect-store``: what a logit store holds, and whether it is sound."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def inspect_store_command(
    store: Annotated[Path, typer.Argument(help="The logit store directory (zarr v3).")],
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object on stdout instead of tables.")
    ] = False,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Check every invariant; exit non-zero naming the first violation.",
        ),
    ] = False,
) -> None:
    """Dataset, V, k, per-teacher accuracy/entropy/leftover, agreement, completeness, sizes."""
    from ..pipeline.stages.inspect_store import InspectStoreConfig, run_inspect_store
    from .common import emit_json

    report = run_inspect_store(
        InspectStoreConfig(store=store, verify=verify, tables=not json_output)
    )
    if json_output:
        emit_json(report)
