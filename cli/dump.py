"""``civt-pipe dump-logits``: stage one — every teacher on every augmented view, into a store."""

from __future__ import annotations

from typing import Any

from ..pipeline.models.teacher_spec import TeacherSpec
from ..pipeline.stages.dump.config import DumpConfig
from .common import emit_json
from .options import JSON_OPTION, config_command


def _convert(values: dict[str, Any], extras: dict[str, Any]) -> dict[str, Any]:
    return {**values, "teachers": tuple(TeacherSpec.parse(t) for t in values["teachers"])}


def _run(cfg: DumpConfig, extras: dict[str, Any]) -> None:
    from ..pipeline.stages.dump.run import print_summary, run_dump

    summary = run_dump(cfg)
    if summary.get("rank", 0) == 0:
        print_summary(summary)
        if extras["as_json"]:
            emit_json(summary)


dump_logits_command = config_command(
    DumpConfig,
    _run,
    doc="""Draw V views per image, run every teacher on each, store top-k logits and view
    parameters.

    Killed at any point, the same command resumes and finishes only the missing shards. Under
    torchrun the shards are split over ranks.
    """,
    extra=[JSON_OPTION],
    convert=_convert,
)
