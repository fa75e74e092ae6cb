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
from rich.markup import escape

from ..pipeline.runtime.options import OptionInfo, option_info

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


def flag_of(f: Field[Any], info: OptionInfo) -> str:
    """The command-line flag of a field: its declared ``flag`` or ``--field-name``."""
    return info.flag or "--" + f.name.replace("_", "-")


def extra_option(
    name: str,
    annotation: Any,
    default: Any,
    flag: str,
    *,
    help: str,
) -> inspect.Parameter:
    """A CLI-only option (``--json``, ``--tau``...) beside the config's fields."""
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[annotation, typer.Option(flag, help=help)],
    )


JSON_OPTION = extra_option(
    "as_json", bool, False, "--json", help="Print the result as one JSON object on stdout."
)
"""``--json``: every command that reports something offers it."""


def _optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` → ``(X, True)``; anything else → ``(tp, False)``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


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
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return inspect.Parameter.empty


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
    f: Field[Any], info: OptionInfo, field_type: Any, *, positional: bool
) -> inspect.Parameter:
    cli_type, repeated = _cli_type(field_type)
    _, optional = _optional(field_type)
    default = _default(f)
    # typer renders help as rich markup, where "[x>=1]" or "[default: ...]" would vanish as tags.
    help_text = escape(info.help + _range_note(info))
    metavar = "|".join(info.choices) if info.choices else None
    if positional:
        spec: Any = typer.Argument(help=help_text, metavar=f.name.upper(), show_default=False)
    elif cli_type is bool:
        name = flag_of(f, info)
        spec = typer.Option(f"{name}/--no-{name[2:]}", help=help_text)
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
    config_type: type, *, arguments: Collection[str] = ()
) -> list[inspect.Parameter]:
    """typer parameters for the CLI fields of ``config_type``; ``arguments`` are positional."""
    hints = typing.get_type_hints(config_type)
    params = [
        _parameter(f, info, hints[f.name], positional=f.name in arguments)
        for f, info in cli_fields(config_type)
    ]
    # Positional arguments first, in the order given, as they appear on the command line.
    order = {name: i for i, name in enumerate(arguments)}
    return sorted(params, key=lambda p: order.get(p.name, len(order)))


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
    """
    fields = {f.name: f for f, _ in cli_fields(config_type)}
    extra_names = {p.name for p in extra}
    clash = extra_names & set(fields)
    if clash:
        raise ValueError(f"extra options {sorted(clash)} shadow fields of {config_type.__name__}")

    hints = typing.get_type_hints(config_type)
    tuples = {n for n in fields if typing.get_origin(_optional(hints[n])[0]) is tuple}

    def command(**values: Any) -> None:
        extras = {name: values.pop(name) for name in extra_names}
        for name, value in values.items():
            if value is None and fields[name].default is not None:
                default = _default(fields[name])
                if default is not inspect.Parameter.empty:
                    values[name] = default
            elif name in tuples and isinstance(value, list):
                values[name] = tuple(value)  # typer collects repeated options in a list
        kwargs = convert(values, extras) if convert is not None else values
        run(config_type(**kwargs), extras)

    parameters = [*config_parameters(config_type, arguments=arguments), *extra]
    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__doc__ = doc
    command.__annotations__ = {}
    return command
