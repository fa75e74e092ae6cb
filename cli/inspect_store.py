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
    from ..stores.inspect import inspect_store, print_report
    from .common import emit_json

    report = inspect_store(store, verify=verify)
    if json_output:
        emit_json(report)
    else:
        print_report(report)
