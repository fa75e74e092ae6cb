"""The typer application: one line per command, each wrapped so user errors print one line."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from ..pipeline import __version__
from ..pipeline.runtime.openmp import set_openmp_defaults
from .common import error_line, user_errors


class OneLineErrors(TyperGroup):
    """The command group, with typer's usage errors as one ``civt-pipe: error:`` line.

    typer draws a bad option value, an unknown option or a missing argument as a usage block
    and a boxed message; every other mistake is one line (:func:`.common.user_errors`), so
    these are too: the message, and where ``--help`` explains the command. Exit code 2.
    """

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        if not standalone_mode or not argv:
            # No arguments at all shows the help (no_args_is_help), as typer does it.
            return super().main(
                argv, prog_name, complete_var, standalone_mode, windows_expand_args, **extra
            )
        try:
            code = super().main(argv, prog_name, complete_var, False, windows_expand_args, **extra)
        except typer.TyperException as err:  # typer's usage errors (bad value, unknown option)
            ctx = getattr(err, "ctx", None)
            where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            error_line(err.format_message() + where)
            sys.exit(err.exit_code)
        except typer.Abort:
            error_line("aborted")
            sys.exit(1)
        # Outside standalone mode typer returns an exit code (typer.Exit, --help) or the
        # command's result (None: success).
        sys.exit(code if isinstance(code, int) else 0)


class PlainUsage(TyperCommand):
    """A command whose usage line names its arguments as the docs write them
    (``civt-pipe export [OPTIONS] CHECKPOINT OUT``), not in typer's braces."""

    # Any: typer vendors its own click, whose Context this is.
    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [
            piece[1:-1] if piece.startswith("{") and piece.endswith("}") else piece
            for piece in super().collect_usage_pieces(ctx)
        ]


# --help is click's plain formatter (rich_markup_mode=None), not typer's rich panels: at 80
# columns the panels squeezed option help into an 18-character column and showed <bool> on
# every flag; click's layout keeps a 30-column option column, rewraps docstrings into
# paragraphs, and shows flags as --x / --no-x.
app = typer.Typer(
    cls=OneLineErrors,
    name="civt-pipe",
    help="Train data-efficient vision transformers from several light teachers (Co-advise / CivT), "
    "with the teachers' logits computed once and stored.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
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
        cakd,
        dump,
        evaluate,
        export,
        inspect_store,
        models,
        plot,
        predict,
        quickstart,
        shards,
        student,
        study,
        teacher,
    )

    # In pipeline order, which is the order ``--help`` lists them in.
    app.command("quickstart")(user_errors(quickstart.quickstart_command))
    app.command("make-shards")(user_errors(shards.make_shards_command))
    app.command("models")(user_errors(models.models_command))
    app.command("train-teacher")(user_errors(teacher.train_teacher_command))
    app.command("evaluate")(user_errors(evaluate.evaluate_command))
    app.command("predict")(user_errors(predict.predict_command))
    app.command("dump-logits")(user_errors(dump.dump_logits_command))
    app.command("inspect-store")(user_errors(inspect_store.inspect_store_command))
    app.command("train-student")(user_errors(student.train_student_command))
    app.command("train-cakd")(user_errors(cakd.train_cakd_command))
    app.command("plot")(user_errors(plot.plot_command))
    app.command("export")(user_errors(export.export_command))
    app.command("study")(user_errors(study.study_command))
    for info in app.registered_commands:
        info.cls = PlainUsage


_register()


def main() -> None:
    """Console-script entry point."""
    # Before any command imports torch: OpenMP reads its wait policy once, when it loads.
    set_openmp_defaults()
    app()
