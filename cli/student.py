"""``civt-pipe train-student``: stage two — train a student against stored (or live) teachers."""

from __future__ import annotations

from typing import Any

from ..pipeline.stages.student.config import (
    StudentTrainConfig,
    parse_align,
    parse_distill,
    parse_per_teacher,
)
from .common import emit_json
from .options import JSON_OPTION, config_command, extra_option


def _convert(values: dict[str, Any], extras: dict[str, Any]) -> dict[str, Any]:
    # --tau/--lambda take T for every teacher or NAME=T for one: a default plus overrides.
    tau, taus = parse_per_teacher(extras["tau"] or [], "--tau")
    lambda_kd, lambdas = parse_per_teacher(extras["lambda_"] or [], "--lambda")
    distill, distills = parse_distill(extras["distill"] or [])
    return {
        **values,
        "tau": tau,
        "taus": taus,
        "lambda_kd": lambda_kd,
        "lambdas": lambdas,
        "distill": distill,
        "distills": distills,
        "align": parse_align(extras["align"] or []),
    }


def _run(cfg: StudentTrainConfig, extras: dict[str, Any]) -> None:
    from ..pipeline.stages.student.run import train_student

    summary = train_student(cfg)
    if extras["as_json"] and summary.get("rank", 0) == 0:
        emit_json(summary)


train_student_command = config_command(
    StudentTrainConfig,
    _run,
    doc="""Train a CivT student on the shards with the store's replayed views and stored logits.

    Killed at any point, the same command with --resume finishes with the same weights. Under
    torchrun it trains with DDP (equal steps on every rank).
    """,
    extra=[
        extra_option(
            "tau",
            list[str] | None,
            None,
            "--tau",
            help="Temperature: T for all teachers, or NAME=T (repeatable).",
        ),
        extra_option(
            "lambda_",
            list[str] | None,
            None,
            "--lambda",
            help="KL weight: L for all teachers, or NAME=L (repeatable).",
        ),
        extra_option(
            "distill",
            list[str] | None,
            None,
            "--distill",
            help="soft (KL at τ) or hard (CE to the teacher's arg-max, DeiT): for all "
            "teachers, or NAME=soft|hard (repeatable) [default: soft].",
        ),
        extra_option(
            "align",
            list[str] | None,
            None,
            "--align",
            help="Aligned mode: NAME=conv|inv (repeatable) [default: from each teacher's arch].",
        ),
        JSON_OPTION,
    ],
    convert=_convert,
)
