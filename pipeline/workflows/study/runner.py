"""Executing a plan's runs: one in-process call into each stage's own function, cached.

Each run lives in ``DIR/runs/<id>/``: its files (teacher checkpoint, store, student run), the
``command.sh`` that repeats it from a shell, and — once it has finished — ``done.json``
(written atomically: result, seconds, cpu_seconds, command). A run with ``done.json`` is never
executed again; an unfinished one resumes: a teacher or student from its ``last``
checkpoint (their ``--resume``), a store in place (``dump-logits`` finishes the missing shards).
"""

from __future__ import annotations

import dataclasses
import json
import resource
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...runtime.atomic import atomic_write_bytes, atomic_write_json
from ...runtime.console import info, warn
from ...runtime.errors import USER_ERRORS
from ...runtime.json_text import finite_or_none
from .runs import COMMANDS, Run

DONE = "done.json"
COMMAND = "command.sh"


def cpu_now() -> float:
    """CPU seconds (user + system) of this process and of its reaped children so far.

    DataLoader workers are child processes: their time counts once they are reaped, which
    happens when a stage's loader shuts down, i.e. within the run that started them.
    """
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def read_done(run_dir: Path) -> dict[str, Any] | None:
    """The ``done.json`` record of a finished run, or None (absent or unreadable)."""
    path = run_dir / DONE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_command(run: Run, run_dir: Path) -> None:
    """``command.sh``: the run's command, executed from the study directory."""
    script = f'#!/bin/sh\n# {run.id}\ncd "$(dirname "$0")/../.." || exit 1\nexec {run.command}\n'
    atomic_write_bytes(run_dir / COMMAND, script.encode())
    (run_dir / COMMAND).chmod(0o755)


def _train_teacher(run: Run) -> dict[str, Any]:
    from ...stages.teacher.run import train_teacher

    return train_teacher(_resumed(run.config))


def _dump(run: Run) -> dict[str, Any]:
    from ....stores.logit_store import LogitStore
    from ...stages.dump.run import print_summary, run_dump

    # An unfinished store resumes in place. One that does not open (killed while it was being
    # created) is this run's own: start it again.
    replace = False
    if Path(run.config.out).exists():
        try:
            LogitStore.open(run.config.out)
        except USER_ERRORS as err:
            warn(f"re-dumping {run.config.out}: {err}")
            replace = True
    summary = run_dump(dataclasses.replace(run.config, overwrite=replace))
    print_summary(summary)
    return summary


def _resumed(config: Any) -> Any:
    """A trainer's config that resumes its run directory's ``last.pt`` if there is one; without
    it nothing is resumable, and ``--overwrite`` clears a killed run's stale files."""
    from ...runtime.run_layout import LAST

    resume = (Path(config.out) / LAST).is_file()
    return dataclasses.replace(config, resume=resume, overwrite=not resume)


def _train_student(run: Run) -> dict[str, Any]:
    from ...stages.student.run import train_student

    return train_student(_resumed(run.config))


def _evaluate(run: Run) -> dict[str, Any]:
    from ...stages.evaluate.run import evaluate

    return evaluate(run.config)


_EXECUTE = {
    "teacher": _train_teacher,
    "dump": _dump,
    "student": _train_student,
    "evaluate": _evaluate,
}


def _plain(result: Mapping[str, Any]) -> dict[str, Any]:
    """The stage's result as plain JSON values (paths as text, non-finite floats as null)."""
    return dict(finite_or_none(json.loads(json.dumps(result, default=str))))


def execute(runs: Sequence[Run], root: Path) -> dict[str, dict[str, Any]]:
    """Run every unfinished run in order; returns every run's ``done.json`` record by id."""
    records: dict[str, dict[str, Any]] = {}
    total = len(runs)
    for number, run in enumerate(runs, start=1):
        run_dir = run.dir(root)
        head = f"[{number}/{total}] {COMMANDS[run.kind]} {run.id}"
        done = read_done(run_dir)
        if done is not None:
            records[run.id] = done
            info(f"{head} [green]reuse[/green]")
            continue
        info(f"{head} …\n  {run.command}")
        run_dir.mkdir(parents=True, exist_ok=True)
        write_command(run, run_dir)
        wall, cpu = time.perf_counter(), cpu_now()
        result = _EXECUTE[run.kind](run)
        record = {
            "id": run.id,
            "kind": run.kind,
            "command": run.command,
            "result": _plain(result),
            "seconds": round(time.perf_counter() - wall, 3),
            "cpu_seconds": round(cpu_now() - cpu, 3),
        }
        atomic_write_json(run_dir / DONE, record)
        records[run.id] = record
        info(f"{head} [green]done[/green] in {record['seconds']:.0f} s")
    return records
