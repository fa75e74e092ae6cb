"""``civt-pipe study``: a plan of experiments end to end, cached and resumable in --out."""

from __future__ import annotations

from typing import Any

from ..pipeline.workflows.study.config import StudyConfig
from .common import emit_json
from .options import JSON_OPTION, config_command


def _run(cfg: StudyConfig, extras: dict[str, Any]) -> None:
    from ..pipeline.workflows.study.run import run_study

    results = run_study(cfg)
    if extras["as_json"]:
        emit_json(results)


study_command = config_command(
    StudyConfig,
    _run,
    doc="""Run a plan of experiments (tables: the paper's ablations; alignment: the aligned
    CivT's stems vs its alignment; views: stored views and logits vs fresh views; cost: CPU of
    the two stages vs online) over seeds, and write --out/results.json, results.md (with paired
    differences and their 95 % intervals) and plots.

    Every run is cached in --out/runs/<id>/: re-running skips finished runs and resumes the rest.
    """,
    extra=[JSON_OPTION],
)
