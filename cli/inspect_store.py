"""``civt-pipe inspect-store``: what a logit store holds, and whether it is sound."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def inspect_store_command(
    # Text, not Path: a URL (s3://bucket/s.zarr) must keep its "//".
    store: Annotated[
        str, typer.Argument(help="The logit store (zarr v3): a directory or a URL (s3://...).")
    ],
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
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            metavar="SHARDS",
            help="With --verify: also check that the store is of these shards and that every "
            "sample's label is still the one the store recorded.",
        ),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            metavar="OUT.png",
            help="Also draw per-class top-1, agreement, entropy and leftover mass per teacher, "
            "and each teacher's confusion matrix, as this PNG (needs the \\[plots] extra).",
        ),
    ] = None,
) -> None:
    """Dataset, V, k, per-teacher accuracy/entropy/leftover, agreement, completeness, sizes."""
    from ..pipeline.stages.inspect_store import InspectStoreConfig, run_inspect_store
    from .common import emit_json

    report = run_inspect_store(
        InspectStoreConfig(store=store, verify=verify, data=data, tables=not json_output, plot=plot)
    )
    if json_output:
        emit_json(report)
