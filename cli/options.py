"""Commands built from the stage configs: every option is declared once, on its config field.

A config field declared with :func:`~civt_pipe.pipeline.runtime.options.option` carries its help
text, flag, range and choices; :func:`config_command` turns the fields of a config dataclass into
typer parameters (typer reads ``inspect.signature``, so a generated ``__signature__`` of
``Annotated[..., typer.Option(...)]`` parameters is all it needs). A command file then says only
which config, which CLI-only arguments (``--json``, positional paths) and how raw values map
where the command line spells a field differently (``--tau cnn=2`` → ``taus``). Each command
imports its stage function inside its ``run``, so a test can replace it on the stage's module.

Ranges and choices are shown in ``--help`` but checked by the config (``check_numbers``,
``check_choices``), so ``--epochs 0`` is the same one-line user error from the CLI as from Python.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Collection, Sequence
from dataclasses import MISSING, Field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union

import typer

from ..pipeline.runtime.config_file import (
    SOURCES_FIELD,
    FileOption,
    Origin,
    file_values,
    read_config_file,
)
from ..pipeline.runtime.errors import UserError
from ..pipeline.runtime.options import (
    OptionInfo,
    field_default,
    flag_of,
    negated_flag,
    option_info,
)

C = TypeVar("C")

Convert = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]
"""``(field values, extra values) -> config keyword arguments`` (raw CLI values mapped)."""

Run = Callable[[C, dict[str, Any]], None]
"""``(config, extra values) -> None``: the command's body once the config is built."""


def cli_fields(config_type: type) -> list[tuple[Field[Any], OptionInfo]]:
    """The fields of ``config_type`` that the command line shows, in declaration order."""
    found = []
    for f in dataclasses.fields(config_type):
        info = option_info(f)
        if info is not None and info.flag != "":
            found.append((f, info))
    return found


def _optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` → ``(X, True)``; anything else → ``(tp, False)``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def extra_option(
    name: str,
    annotation: Any,
    default: Any,
    flag: str,
    *,
    help: str,
) -> inspect.Parameter:
    """A CLI-only option (``--json``, ``--tau``...) beside the config's fields."""
    repeated = typing.get_origin(_optional(annotation)[0]) in (list, tuple)
    metavar = "<str>" if repeated else None
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[annotation, typer.Option(flag, help=help, metavar=metavar)],
    )


JSON_OPTION = extra_option(
    "as_json", bool, False, "--json", help="Print the result as one JSON object on stdout."
)
"""``--json``: every command that reports something offers it."""


_PLAIN = (str, int, float, bool, Path)


def _cli_type(tp: Any) -> tuple[Any, bool]:
    """What typer parses for a field of type ``tp``, and whether it repeats (a list option)."""
    base, _ = _optional(tp)
    origin = typing.get_origin(base)
    if origin is Literal:
        return str, False
    if origin in (tuple, list):
        item = _cli_type(typing.get_args(base)[0])[0]
        # Items of a richer type (TeacherSpec) arrive as text; the command's convert parses them.
        element: type = item if item in _PLAIN else str
        return list[element], True  # type: ignore[valid-type]
    return base, False


def _default(f: Field[Any]) -> Any:
    """The field's default, or ``inspect.Parameter.empty`` (inspect's "required")."""
    default = field_default(f)
    return inspect.Parameter.empty if default is MISSING else default


def _range_note(info: OptionInfo) -> str:
    lo, hi = info.minimum, info.maximum
    if lo is not None and hi is not None:
        return f" [{lo:g}<=x<={hi:g}]"
    if lo is not None:
        return f" [x>={lo:g}]"
    if hi is not None:
        return f" [x<={hi:g}]"
    return ""


def _parameter(
    f: Field[Any], info: OptionInfo, field_type: Any, *, positional: bool, checked_later: bool
) -> inspect.Parameter:
    cli_type, repeated = _cli_type(field_type)
    _, optional = _optional(field_type)
    default = _default(f)
    note = _range_note(info)
    if checked_later:
        # Required, but it may come from --config: the command checks it once the file is read.
        default, optional, note = None, True, note + " [required]"
    # Plain text: the app renders help with click's formatter, not rich markup (cli/app.py).
    help_text = info.help + note
    metavar = "|".join(info.choices) if info.choices else "<str>" if repeated else None
    if positional:
        spec: Any = typer.Argument(help=help_text, metavar=f.name.upper(), show_default=False)
    elif cli_type is bool:
        name = flag_of(f, info)
        spec = typer.Option(f"{name}/{negated_flag(name)}", help=help_text)
    else:
        spec = typer.Option(flag_of(f, info), help=help_text, metavar=metavar)
    if repeated:
        # typer gives None for a list option never given; the command maps it back to the
        # field's default. A required list stays required.
        annotation: Any = cli_type if default is inspect.Parameter.empty else cli_type | None
        default = inspect.Parameter.empty if default is inspect.Parameter.empty else None
    else:
        annotation = cli_type | None if optional else cli_type
    return inspect.Parameter(
        f.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[annotation, spec],
    )


def config_parameters(
    config_type: type, *, arguments: Collection[str] = (), checked_later: Collection[str] = ()
) -> list[inspect.Parameter]:
    """typer parameters for the CLI fields of ``config_type``; ``arguments`` are positional.

    The required fields named in ``checked_later`` are optional for click (the command itself
    checks them, after reading ``--config``).
    """
    hints = typing.get_type_hints(config_type)
    params = [
        _parameter(
            f,
            info,
            hints[f.name],
            positional=f.name in arguments,
            checked_later=f.name in checked_later,
        )
        for f, info in cli_fields(config_type)
    ]
    # Positional arguments first, in the order given, as they appear on the command line.
    order = {name: i for i, name in enumerate(arguments)}
    return sorted(params, key=lambda p: order.get(p.name, len(order)))


CONFIG_PARAMETER = "config_file"
"""The parameter of ``--config`` on every :func:`config_command`."""

CONFIG_OPTION = extra_option(
    CONFIG_PARAMETER,
    Path | None,
    None,
    "--config",
    help="TOML file of options (keys: option names; a [COMMAND] table for one command). "
    "Options given on the command line win; see docs/commands.md.",
)


def _file_option(name: str, key: str, annotation: Any, flag: str) -> FileOption:
    cli_type, repeated = _cli_type(annotation)
    element = typing.get_args(cli_type)[0] if repeated else cli_type
    return FileOption(name=name, key=key, flag=flag, element=element, repeated=repeated)


def _file_options(config_type: type, extra: Sequence[inspect.Parameter]) -> list[FileOption]:
    """What a config file may set: every CLI field of ``config_type`` and every extra option."""
    hints = typing.get_type_hints(config_type)
    found = [
        _file_option(f.name, f.name, hints[f.name], flag_of(f, info))
        for f, info in cli_fields(config_type)
    ]
    for p in extra:
        annotation, spec = typing.get_args(p.annotation)
        # In Annotated[..., typer.Option("--tau")] typer reads the first argument, stored as
        # the default, as the first flag.
        flag = spec.default if isinstance(spec.default, str) else spec.param_decls[0]
        key = flag.removeprefix("--").replace("-", "_")  # --lambda -> lambda, not lambda_
        found.append(_file_option(p.name, key, annotation, flag))
    return found


CONTEXT_PARAMETER = "cli_context"
"""The parameter through which typer hands every :func:`config_command` its click context."""

_GIVEN = frozenset({"COMMANDLINE", "ENVIRONMENT", "PROMPT"})
"""click's ``ParameterSource`` names of a value the user typed (anything else is a default)."""


def _command_line_names(ctx: typer.Context | None, names: Collection[str]) -> set[str]:
    """The parameters given on the command line (or the environment), not left at defaults.

    Without a click context (the command called as a function) every value counts as given.
    """
    if ctx is None:
        return set(names)
    sources = {n: ctx.get_parameter_source(n) for n in names}
    return {n for n, source in sources.items() if source is not None and source.name in _GIVEN}


def _from_file(ctx: typer.Context | None, path: Path, options: list[FileOption]) -> dict[str, Any]:
    """The typed values a config file gives this command (see :mod:`config_file`)."""
    command = ctx.info_name if ctx is not None and ctx.info_name else "this command"
    commands: set[str] = {command}
    parent = ctx.parent if ctx is not None else None
    list_commands = getattr(parent.command, "list_commands", None) if parent else None
    if list_commands is not None:  # the other commands of the program (civt-pipe's group)
        commands.update(list_commands(parent))
    layers = read_config_file(path, command, commands)
    return file_values(path, layers, options, command)


def _has_field(config_type: type, name: str) -> bool:
    return name in {f.name for f in dataclasses.fields(config_type)}


def config_command(
    config_type: type[C],
    run: Run[C],
    *,
    doc: str,
    arguments: Sequence[str] = (),
    extra: Sequence[inspect.Parameter] = (),
    convert: Convert | None = None,
) -> Callable[..., None]:
    """A typer command whose options are the CLI fields of ``config_type`` plus ``extra``.

    The command builds ``config_type(**convert(fields, extras))`` (list options left out
    become the field's default) and calls ``run(config, extras)``. ``doc`` is its ``--help``.

    Every such command takes ``--config FILE.toml`` (:mod:`..pipeline.runtime.config_file`):
    the file fills what the command line leaves at its default, so required options may come
    from either. A config field named ``sources`` receives where each option came from.
    """
    fields = {f.name: f for f, _ in cli_fields(config_type)}
    extra_names = {p.name for p in extra}
    clash = (extra_names | {CONFIG_PARAMETER, CONTEXT_PARAMETER}) & set(fields)
    if clash:
        raise ValueError(f"extra options {sorted(clash)} shadow fields of {config_type.__name__}")

    hints = typing.get_type_hints(config_type)
    tuples = {n for n in fields if typing.get_origin(_optional(hints[n])[0]) is tuple}
    file_options = _file_options(config_type, extra)
    key_of = {option.name: option.key for option in file_options}
    # Required options are checked here, once the file is read, not by click (which would
    # refuse a command line that leaves them to the file).
    required = {
        n: flag_of(f, info)
        for f, info in cli_fields(config_type)
        if (n := f.name) not in arguments and _default(f) is inspect.Parameter.empty
    }
    wants_sources = _has_field(config_type, SOURCES_FIELD)

    def command(**values: Any) -> None:
        path = values.pop(CONFIG_PARAMETER)
        ctx = values.pop(CONTEXT_PARAMETER, None)
        on_command_line = _command_line_names(ctx, values)
        from_file = _from_file(ctx, path, file_options) if path is not None else {}
        for name, value in from_file.items():
            if name in arguments:
                raise UserError(f"{name.upper()} is an argument: give it on the command line")
            if name not in on_command_line:
                values[name] = value
        for name, flag in required.items():
            if values[name] is None:
                raise UserError(
                    f"missing option '{flag}' (give it on the command line or in --config)"
                )
        sources: dict[str, Origin] = {
            key_of[name]: "command-line"
            if name in on_command_line
            else "config-file"
            if name in from_file
            else "default"
            for name in values
        }
        extras = {name: values.pop(name) for name in extra_names}
        for name, value in values.items():
            if value is None and fields[name].default is not None:
                default = _default(fields[name])
                if default is not inspect.Parameter.empty:
                    values[name] = default
            elif name in tuples and isinstance(value, list):
                values[name] = tuple(value)  # typer collects repeated options in a list
        kwargs = convert(values, extras) if convert is not None else values
        if wants_sources:
            kwargs = {**kwargs, SOURCES_FIELD: sources}
        config = config_type(**kwargs)
        # The refusals that need no data, before the command imports its stage (and torch).
        preflight = getattr(config, "preflight", None)
        if preflight is not None:
            preflight()
        run(config, extras)

    parameters = [
        *config_parameters(config_type, arguments=arguments, checked_later=required),
        *extra,
        CONFIG_OPTION,
        inspect.Parameter(
            CONTEXT_PARAMETER, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context
        ),
    ]
    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__doc__ = doc
    command.__annotations__ = {}
    return command
