"""``civt-pipe train-cakd``: distil a live ViT teacher into a CNN student (CAKD, logit KD, none)."""

from __future__ import annotations

from typing import Any

from ..pipeline.stages.cakd.config import CakdTrainConfig
from .common import emit_json
from .options import JSON_OPTION, config_command


def _run(cfg: CakdTrainConfig, extras: dict[str, Any]) -> None:
    from ..pipeline.stages.cakd.run import train_cakd

    summary = train_cakd(cfg)
    if extras["as_json"] and summary["rank"] == 0:  # under torchrun only rank 0 reports
        emit_json(summary)


train_cakd_command = config_command(
    CakdTrainConfig,
    _run,
    doc="""Train a CNN student from a live ViT teacher: cross-architecture KD (Liu et al., ACCV
    2022: PCA + GL projectors, multi-view adversary, plus CE), Hinton logit KD, or labels only.

    Writes RUN_DIR/final.pt + final.safetensors (the student alone, for evaluate), last.pt
    (resumable: projectors, discriminator and both optimizers too), metrics.jsonl, config.json.
    Killed at any point, the same command with --resume finishes with the same weights; DDP
    under torchrun.
    """,
    extra=[JSON_OPTION],
)
