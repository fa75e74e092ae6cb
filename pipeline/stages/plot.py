"""``civt-pipe plot``: training curves of one or several runs as one PNG.

The curves come from the runs' ``metrics.jsonl`` (:mod:`..viz.runs`), which stays the source of
truth; the picture is a view of it, rewritten on every call. This module stays free of torch and
matplotlib at import (the CLI reads :class:`PlotConfig` at start-up); matplotlib, the optional
``[plots]`` extra, is imported only to draw.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..runtime.errors import UserError
from ..runtime.options import option


@dataclass(kw_only=True, slots=True)
class PlotConfig:
    """What ``civt-pipe plot`` draws."""

    run_dirs: tuple[Path, ...] = option(
        help="train-student run directories (metrics.jsonl inside) or train-teacher checkpoints "
        "(X.pt with X.metrics.jsonl beside it); several are overlaid."
    )
    out: Path | None = option(
        None,
        help="The PNG to write (default: RUN_DIR/plot.png, or X.plot.png beside a teacher's "
        "X.pt, for one run; required for several).",
    )

    def __post_init__(self) -> None:
        self.run_dirs = tuple(Path(p) for p in self.run_dirs)
        if self.out is not None:
            self.out = Path(self.out)
        if not self.run_dirs:
            raise UserError("give at least one run directory or teacher checkpoint to plot")
        if self.out is None and len(self.run_dirs) > 1:
            raise UserError(
                f"plotting {len(self.run_dirs)} runs together needs --out FILE.png "
                "(one run's picture goes into its own directory)"
            )


def plot_runs(cfg: PlotConfig) -> dict[str, Any]:
    """Read every run's metrics, draw them overlaid and write the PNG.

    Returns ``{"out", "width", "height", "panels", "runs": [{"name", "path", "metrics_file",
    "records"}]}``. Every check (matplotlib installed, each run readable, ``out`` a writable
    ``.png``) happens before anything is drawn.
    """
    from ..viz.figure import check_png_path, require_matplotlib
    from ..viz.runs import default_plot_path, draw_runs, load_run

    require_matplotlib()
    runs = [load_run(path) for path in cfg.run_dirs]
    out = cfg.out if cfg.out is not None else default_plot_path(cfg.run_dirs[0])
    check_png_path(out)
    drawn = draw_runs(runs, out)
    return {
        "out": str(out),
        **drawn,
        "runs": [
            {
                "name": run.name,
                "path": str(run.path),
                "metrics_file": str(run.metrics_file),
                "records": run.records,
            }
            for run in runs
        ],
    }
