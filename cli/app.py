"""The typer application: one line per command, each wrapped so user errors print one line."""

from __future__ import annotations

from typing import Annotated

import typer

from ..pipeline import __version__
from .common import user_errors

app = typer.Typer(
    name="civt-pipe",
    help="Train data-efficient vision transformers from several light teachers (Co-advise / CivT), "
    "with the teachers' logits computed once and stored.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"civt-pipe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Co-advise (CivT) distillation from stored multi-teacher logits."""


def _register() -> None:
    # Imported here, after ``app`` exists; each module imports heavy code inside its command.
    from . import (
        dump,
        evaluate,
        inspect_store,
        models,
        quickstart,
        shards,
        student,
        teacher,
    )

    # In pipeline order, which is the order ``--help`` lists them in.
    app.command("quickstart")(user_errors(quickstart.quickstart_command))
    app.command("make-shards")(user_errors(shards.make_shards_command))
    app.command("models")(user_errors(models.models_command))
    app.command("train-teacher")(user_errors(teacher.train_teacher_command))
    app.command("evaluate")(user_errors(evaluate.evaluate_command))
    app.command("dump-logits")(user_errors(dump.dump_logits_command))
    app.command("inspect-store")(user_errors(inspect_store.inspect_store_command))
    app.command("train-student")(user_errors(student.train_student_command))


_register()


def main() -> None:
    """Console-script entry point."""
    app()
