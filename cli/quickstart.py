"""``civt-pipe quickstart``: the whole pipeline on the built-in digits, ending in a table."""

from __future__ import annotations

from typing import Any

from ..pipeline.workflows.quickstart import QuickstartConfig
from .common import emit_json
from .options import JSON_OPTION, config_command


def _run(cfg: QuickstartConfig, extras: dict[str, Any]) -> None:
    from ..pipeline.workflows.quickstart import print_results, run_quickstart

    result = run_quickstart(cfg)
    print_results(result)
    if extras["as_json"]:
        emit_json(result)


quickstart_command = config_command(
    QuickstartConfig,
    _run,
    doc="""Make digits shards, train a CNN and an involution teacher, dump their logits, train CivT
    from the store and a no-distillation baseline, and compare them on the test split.

    Finished steps in --out are reused, so an interrupted quickstart resumes when re-run.
    """,
    extra=[JSON_OPTION],
)
