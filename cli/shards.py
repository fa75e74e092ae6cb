"""``civt-pipe make-shards``: write a dataset split as WebDataset tars plus ``index.json``."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer


class Split(str, Enum):
    train = "train"
    test = "test"


class ImageFormat(str, Enum):
    png = "png"
    jpg = "jpg"


def make_shards_command(
    source: Annotated[
        str,
        typer.Argument(
            help="digits (built in, no download), idx:DIR (MNIST-family idx files), "
            "cifar:DIR (CIFAR-10/100 python batches) or folder:DIR (one subfolder per class)."
        ),
    ],
    out_dir: Annotated[
        Path, typer.Argument(help="Directory for the tars and index.json (one per split).")
    ],
    split: Annotated[Split, typer.Option(help="Which split of the source to write.")] = Split.train,
    shard_size: Annotated[int, typer.Option(help="Samples per tar.", min=1)] = 1000,
    image_format: Annotated[
        ImageFormat | None,
        typer.Option("--format", help="Image encoding (default: png; jpg for folder:DIR)."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace the shards in a non-empty OUT_DIR.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the written index as one JSON object.")
    ] = False,
) -> None:
    """Write a dataset split as WebDataset shards ({key}.png|jpg + {key}.cls) and index.json."""
    from ..pipeline.data.make_shards import MakeShardsConfig, make_shards
    from ..pipeline.runtime.console import info
    from .common import emit_json

    cfg = MakeShardsConfig(
        source=source,
        out_dir=out_dir,
        split=split.value,
        shard_size=shard_size,
        format=image_format.value if image_format is not None else None,
        overwrite=overwrite,
    )
    index = make_shards(cfg)
    size = "x".join(map(str, index.image_size)) if index.image_size else "mixed sizes"
    info(
        f"wrote {index.num_samples} {index.split} samples in {len(index.shards)} shards to "
        f"{out_dir} ({index.num_classes} classes, {index.channels} channel(s), {size})"
    )
    if as_json:
        emit_json({"out_dir": str(out_dir), **index.to_dict()})
