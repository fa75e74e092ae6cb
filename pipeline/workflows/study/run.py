"""``run_study``: check the data, build the plan's runs, execute them, write the results."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from ...runtime.console import console, info
from ...runtime.errors import UserError
from .config import StudyConfig
from .plans import PLAN_BUILDERS, RunBook
from .report import draw_plots, merge_results, plan_dict, read_results, run_entries, write_results
from .runner import execute, read_done


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
    if cfg.subset is not None and cfg.subset < len(train):
        paths = [Path(p) for p in train.paths[: cfg.subset]]
        if cfg.subset == 1:
            data = str(paths[0])
        elif len({p.parent for p in paths}) == 1:
            data = f"{paths[0].parent}/{{{','.join(p.name for p in paths)}}}"
        else:
            raise UserError(f"--subset needs the shards of --data {cfg.data} in one directory")
    elif cfg.subset is not None and cfg.subset > len(train):
        raise UserError(f"--subset {cfg.subset}: --data {cfg.data} has {len(train)} shards")
    val = resolve_complete_shards(_local(cfg.val))
    if val.num_classes != train.num_classes:
        raise UserError(
            f"--val {cfg.val} has {val.num_classes} classes, --data {cfg.data} has "
            f"{train.num_classes}: evaluate on a split of the same dataset"
        )
    return data, train.num_classes


def run_study(cfg: StudyConfig) -> dict[str, Any]:
    """Run (or resume) ``cfg.plan`` in ``cfg.out``; returns results.json's dict (see
    /docs/study.md and study_api.md for its schema)."""
    started = time.perf_counter()
    root = cfg.out.resolve()
    if root.exists() and not root.is_dir():
        raise UserError(f"--out {cfg.out} exists and is not a directory")
    data, num_classes = training_shards(cfg)
    cfg = dataclasses.replace(cfg, val=_local(cfg.val))
    book = RunBook(cfg, root, data, num_classes)
    spec = PLAN_BUILDERS[cfg.plan](book, range(cfg.seeds))
    root.mkdir(parents=True, exist_ok=True)
    reused = sum(read_done(run.dir(root)) is not None for run in spec.runs)
    console.rule(f"[bold]study {cfg.plan}[/bold] · {cfg.seeds} seed(s) in {root}", align="left")
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
