"""``civt-pipe evaluate``: top-1/top-5 accuracy of a teacher or student checkpoint."""

from __future__ import annotations

from typing import Any

from ..pipeline.stages.evaluate.run import EvaluateConfig
from .common import emit_json
from .options import JSON_OPTION, config_command


def _run(cfg: EvaluateConfig, extras: dict[str, Any]) -> None:
    from ..pipeline.stages.evaluate.run import evaluate

    result = evaluate(cfg)
    if extras["as_json"]:
        emit_json(result)
        return
    from rich.table import Table

    from ..pipeline.runtime.console import console

    table = Table(title=f"{result['arch']} ({result['kind']}) on {result['num_samples']} samples")
    for column in ("head", "top-1", "top-5"):
        table.add_column(column, justify="left" if column == "head" else "right")
    for name, acc in result["heads"].items():
        table.add_row(name, f"{acc['top1']:.2%}", f"{acc['top5']:.2%}")
    console.print(table)
    if "transferability" in result:
        console.print(
            f"transferability (cosine of teacher and student probabilities): "
            f"{result['transferability']:.4f}"
        )
    if "kl_to_teachers" in result:
        kl = result["kl_to_teachers"]
        teachers = list(next(iter(kl.values())))
        kl_table = Table(title=f"KL(teacher ‖ head) on the views of {result['store']}")
        kl_table.add_column("head")
        for name in teachers:
            kl_table.add_column(name, justify="right")
        for head, row in kl.items():
            kl_table.add_row(head, *(f"{row[t]:.4f}" for t in teachers))
        console.print(kl_table)


evaluate_command = config_command(
    EvaluateConfig,
    _run,
    doc="Accuracy of every head of a checkpoint (students: cls, each teacher token, mean).",
    extra=[JSON_OPTION],
)
