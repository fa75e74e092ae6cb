"""``civt-pipe make-shards``: write a dataset split as WebDataset tars plus ``index.json``."""

from __future__ import annotations

from typing import Any

from ..pipeline.data.make_shards import MakeShardsConfig
from ..pipeline.runtime.console import info
from .common import emit_json
from .options import JSON_OPTION, config_command


def _run(cfg: MakeShardsConfig, extras: dict[str, Any]) -> None:
    from ..pipeline.data.make_shards import make_shards

    index = make_shards(cfg)
    size = "x".join(map(str, index.image_size)) if index.image_size else "mixed sizes"
    info(
        f"wrote {index.num_samples} {index.split} samples in {len(index.shards)} shards to "
        f"{cfg.out_dir} ({index.num_classes} classes, {index.channels} channel(s), {size})"
    )
    if extras["as_json"]:
        emit_json({"out_dir": str(cfg.out_dir), **index.to_dict()})


make_shards_command = config_command(
    MakeShardsConfig,
    _run,
    doc="Write a dataset split as WebDataset shards ({key}.png|jpg + {key}.cls) and index.json.",
    arguments=("source", "out_dir"),
    extra=[JSON_OPTION],
)
