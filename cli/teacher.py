"""``civt-pipe train-teacher``: train a CNN or involution teacher on shards."""

from __future__ import annotations

from typing import Any

from ..pipeline.stages.teacher.config import TeacherTrainConfig
from .common import emit_json
from .options import JSON_OPTION, config_command


def _run(cfg: TeacherTrainConfig, extras: dict[str, Any]) -> None:
    from ..pipeline.stages.teacher.run import train_teacher

    result = train_teacher(cfg)
    if extras["as_json"] and result["rank"] == 0:  # under torchrun only rank 0 reports
        emit_json(result)


train_teacher_command = config_command(
    TeacherTrainConfig,
    _run,
    doc="""Train a teacher (crop/flip, warm-up + cosine, label smoothing) into the run directory
    --out (last.pt, final.pt, final.safetensors, metrics.jsonl, config.json). DDP under
    torchrun.""",
    extra=[JSON_OPTION],
)
