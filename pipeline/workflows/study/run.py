"""``run_study``: check the data, build the plan's runs, execute them, write the results."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...runtime.console import console, info
from ...runtime.errors import UserError
from .config import StudyConfig
from .plans import PLAN_BUILDERS, RunBook
from .report import draw_plots, merge_results, plan_dict, read_results, run_entries, write_results
from .runner import execute, read_done

if TYPE_CHECKING:
    from ...data.remote import ShardPath


def _local(spec: str) -> str:
    """A local path or pattern made absolute (commands are run from the study directory)."""
    if "://" in spec or spec.startswith("pipe:"):
        return spec
    return os.path.abspath(os.path.expanduser(spec))


def training_shards(cfg: StudyConfig) -> tuple[str, int]:
    """The training shards every run reads (the first ``--subset`` of them) and the class count.

    Raises:
        UserError: shards without labels, fewer shards than ``--subset``, or a --val set of
            another class count.
    """
    from ...data.shard_set import resolve_complete_shards

    data = _local(cfg.data)
    train = resolve_complete_shards(data)
    if cfg.subset is not None:
        data = _first_shards(data, train.paths, cfg.subset, "--subset")
    val = resolve_complete_shards(_local(cfg.val))
    if val.num_classes != train.num_classes:
        raise UserError(
            f"--val {cfg.val} has {val.num_classes} classes, --data {cfg.data} has "
            f"{train.num_classes}: evaluate on a split of the same dataset"
        )
    return data, train.num_classes


def student_shards(cfg: StudyConfig, data: str) -> str:
    """The stores' and students' shards: the first ``--student-subset`` of ``data`` (the
    teachers' shards), or ``data`` itself.

    Raises:
        UserError: fewer shards than ``--student-subset``.
    """
    if cfg.student_subset is None:
        return data
    from ...data.shard_set import resolve_complete_shards

    shards = resolve_complete_shards(data).paths
    return _first_shards(data, shards, cfg.student_subset, "--student-subset")


def _first_shards(data: str, shards: Sequence[ShardPath], count: int, flag: str) -> str:
    """A pattern naming the first ``count`` of ``shards``, the shards ``data`` names (all of
    them: ``data`` itself)."""
    if count > len(shards):
        raise UserError(f"{flag} {count}: {data} has {len(shards)} shards")
    if count == len(shards):
        return data
    paths = [Path(p) for p in shards[:count]]
    if count == 1:
        return str(paths[0])
    if len({p.parent for p in paths}) == 1:
        return f"{paths[0].parent}/{{{','.join(p.name for p in paths)}}}"
    raise UserError(f"{flag} needs the shards of {data} in one directory")


def run_study(cfg: StudyConfig) -> dict[str, Any]:
    """Run (or resume) ``cfg.plan`` in ``cfg.out``; returns results.json's dict (see
    /docs/study.md and study_api.md for its schema)."""
    started = time.perf_counter()
    root = cfg.out.resolve()
    if root.exists() and not root.is_dir():
        raise UserError(f"--out {cfg.out} exists and is not a directory")
    data, num_classes = training_shards(cfg)
    cfg = dataclasses.replace(cfg, val=_local(cfg.val))
    book = RunBook(cfg, root, data, num_classes, student_shards(cfg, data))
    seeds = cfg.seed_range
    spec = PLAN_BUILDERS[cfg.plan](book, seeds)
    root.mkdir(parents=True, exist_ok=True)
    reused = sum(read_done(run.dir(root)) is not None for run in spec.runs)
    console.rule(
        f"[bold]study {cfg.plan}[/bold] · seeds {seeds[0]}..{seeds[-1]} in {root}", align="left"
    )
    info(f"{len(spec.runs)} runs: {reused} finished earlier, {len(spec.runs) - reused} to run")
    records = execute(spec.runs, root)
    settings = {**cfg.settings(num_classes), "data": data}
    plan = plan_dict(spec, settings, records)
    plan["plots"] = draw_plots(root, cfg.plan, plan)
    results = merge_results(
        read_results(root),
        out=str(root),
        name=cfg.plan,
        plan=plan,
        runs=run_entries(spec, records),
    )
    write_results(root, results)
    info(
        f"study {cfg.plan}: {plan['cpu_seconds'] / 60:.1f} CPU minutes over its runs, "
        f"{time.perf_counter() - started:.0f} s now; {root / 'results.md'}"
    )
    return results
