"""Human output: a rich console on stderr and a progress-bar factory.

Stdout is kept for ``--json`` results, so everything meant for a person goes to stderr.
"""

from __future__ import annotations

import os

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

console = Console(stderr=True, highlight=False)
# Not a terminal (a log file, a pipe, CI): rich would hard-wrap every line at 80 columns, mid
# token ("(49.8 ⏎ s)"); a log line stays one line there, and a terminal keeps rich's wrapping.
console.soft_wrap = not console.is_terminal


def progress_enabled() -> bool:
    """Progress bars are drawn unless ``CIVT_PIPE_NO_PROGRESS`` is set (tests, batch logs)."""
    return not os.environ.get("CIVT_PIPE_NO_PROGRESS")


class _RateColumn(ProgressColumn):
    """Items per second, with the unit taken from the task's ``unit`` field (default "it")."""

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit", "it")
        if task.speed is None:
            return Text(f"- {unit}/s", style="progress.data.speed")
        return Text(f"{task.speed:,.1f} {unit}/s", style="progress.data.speed")


class _InfoColumn(ProgressColumn):
    """Free text a task keeps up to date (loss, accuracy...), from its ``info`` field."""

    def render(self, task: Task) -> Text:
        return Text(str(task.fields.get("info", "")))


def make_progress(*, disable: bool = False) -> Progress:
    """A progress bar on stderr: description, bar, n/total, rate, elapsed, ETA, info."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        _InfoColumn(),
        console=console,
        disable=disable or not progress_enabled(),
    )


def info(message: str) -> None:
    """One line of human output on stderr."""
    console.print(message)


def warn(message: str) -> None:
    """A warning line on stderr."""
    console.print(f"[yellow]warning:[/yellow] {message}")
