"""``civt-pipe plot``: loss terms, learning rate and validation accuracy of runs, as one PNG."""

from __future__ import annotations

from typing import Any

from ..pipeline.runtime.console import info
from ..pipeline.stages.plot import PlotConfig
from .common import emit_json
from .options import JSON_OPTION, config_command


def _run(cfg: PlotConfig, extras: dict[str, Any]) -> None:
    from ..pipeline.stages.plot import plot_runs

    result = plot_runs(cfg)
    names = ", ".join(run["name"] for run in result["runs"])
    info(
        f"wrote {result['out']} ({result['width']}x{result['height']} px, "
        f"{len(result['panels'])} panels) of {names}"
    )
    if extras["as_json"]:
        emit_json(result)


plot_command = config_command(
    PlotConfig,
    _run,
    doc="Plot loss terms, learning rate and validation accuracy per head of train-student runs "
    "or train-teacher checkpoints; several runs are overlaid (needs the \\[plots] extra).",
    arguments=("run_dirs",),
    extra=[JSON_OPTION],
)
