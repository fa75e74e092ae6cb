"""``--config FILE.toml``: a command's options read from a TOML file (torch-free: the CLI imports
it at start-up).

The file is one flat table of options, keyed by config field name (``batch_size``) or by the
flag's spelling without the dashes (``batch-size``, ``teacher``, ``lambda``). A table named after
a command (``[train-student]``) holds options for that command only and wins over the flat keys,
so one file can drive several commands; tables named after other commands are skipped. Every
flat key must be an option of the command that reads the file: a typo is an error, not a silent
default. Options given on the command line override the file.

Values are TOML values of the option's type. A repeatable option takes a list, a single value,
or a table ``{cnn = 2.0}`` that spells ``NAME=VALUE`` items (``--tau cnn=2``). Relative paths
are relative to the working directory, as on the command line.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - pyproject installs tomli there
    import tomli as tomllib

Origin = Literal["default", "config-file", "command-line"]
"""Where a resolved option value came from (recorded in the run's ``config.json``)."""

SOURCES_FIELD = "sources"
"""A config field of this name receives ``{option: Origin}`` from the command line."""


@dataclass(frozen=True, slots=True)
class FileOption:
    """What a config file may set for one option of a command."""

    name: str
    """The command's parameter name (a config field, or an extra option like ``lambda_``)."""
    key: str
    """Its name in the recorded sources: the field name, or an extra option's flag (``lambda``)."""
    flag: str
    """The command-line flag (``--batch-size``), named in errors."""
    element: type
    """``str``, ``int``, ``float``, ``bool`` or ``Path``: the type of the value or of each item."""
    repeated: bool = False
    """A repeatable option: the file gives a list, one value or a ``{NAME = VALUE}`` table."""


def given_in(sources: Mapping[str, str], name: str) -> str:
    """How a value the user gave for ``name`` reached the run, for provenance notes:
    ``config file`` when its recorded origin says so, else ``command line``."""
    return "config file" if sources.get(name) == "config-file" else "command line"


def option_keys(option: FileOption) -> set[str]:
    """Every key spelling a file may use for ``option`` (field name and flag, dashes or not)."""
    spellings = {option.key, option.flag.removeprefix("--")}
    return {s for text in spellings for s in (text, text.replace("-", "_"), text.replace("_", "-"))}


def read_config_file(path: Path, command: str, commands: Collection[str]) -> list[dict[str, Any]]:
    """The raw ``key -> value`` tables ``command`` reads from the TOML file at ``path``.

    Two layers, the later winning: the flat keys (tables named after one of ``commands``, the
    program's commands, left out), then the ``[command]`` table (empty when there is none).
    """
    try:
        with path.open("rb") as handle:
            table = tomllib.load(handle)
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"config file {path} is a directory, not a TOML file") from None
    except OSError as err:
        raise UserError(f"cannot read config file {path}: {err.strerror or err}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"config file {path} is not valid TOML: {err}") from None
    flat = {k: v for k, v in table.items() if not (k in commands and isinstance(v, dict))}
    section = table.get(command)
    return [flat, section if isinstance(section, dict) else {}]


def file_values(
    path: Path,
    layers: Sequence[Mapping[str, Any]],
    options: Collection[FileOption],
    command: str,
) -> dict[str, Any]:
    """``{parameter name: value}`` from a file's raw tables, every key known and typed.

    A later layer wins over an earlier one, whatever spelling each uses. An unknown key is one
    line naming the key, the command and the closest option; a value of the wrong type is one
    line naming the key and the type it needs; one option twice in a layer is an error.
    """
    out: dict[str, Any] = {}
    for raw in layers:
        out.update(_layer_values(path, raw, options, command))
    return out


def _layer_values(
    path: Path, raw: Mapping[str, Any], options: Collection[FileOption], command: str
) -> dict[str, Any]:
    by_key = {key: option for option in options for key in option_keys(option)}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        option = by_key.get(key)
        if option is None:
            close = difflib.get_close_matches(key, sorted(by_key), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"config file {path}: {command} has no option {key!r}{hint}")
        if option.name in out:
            raise UserError(f"config file {path}: {option.flag} is given twice (as {key!r})")
        where = f"config file {path}: {key!r}"
        out[option.name] = (
            _items(value, option.element, where) if option.repeated else _one(value, option, where)
        )
    return out


_TYPE_NAMES: dict[type, str] = {
    str: "a string",
    Path: "a path (string)",
    int: "an integer",
    float: "a number",
    bool: "true or false",
}


def _type_name(element: type) -> str:
    return _TYPE_NAMES.get(element, f"a {element.__name__}")


def _one(value: Any, option: FileOption, where: str) -> Any:
    converted = _scalar(value, option.element)
    if converted is None:
        raise UserError(f"{where} must be {_type_name(option.element)}, got {_shown(value)}")
    return converted


def _scalar(value: Any, element: type) -> Any:
    """``value`` as ``element``, or None when a TOML value of that type cannot mean it."""
    if element is bool:
        return value if isinstance(value, bool) else None
    if isinstance(value, bool):  # TOML true is no number and no text
        return None
    if element is int:
        return value if isinstance(value, int) else None
    if element is float:
        return float(value) if isinstance(value, int | float) else None
    if isinstance(value, str):
        return Path(value) if element is Path else value
    return None


def _items(value: Any, element: type, where: str) -> list[Any]:
    """A repeatable option's items: a list, one value, or ``{NAME = VALUE}`` as ``NAME=VALUE``."""
    if isinstance(value, dict):
        texts = []
        for name, item in value.items():
            if isinstance(item, bool) or not isinstance(item, str | int | float):
                raise UserError(f"{where}: {name!r} must be a string or a number")
            texts.append(f"{name}={item}")
        return texts
    values = value if isinstance(value, list) else [value]
    out = []
    for item in values:
        # Items arrive as the command line's text would (--tau 2 and tau = 2 mean the same).
        text_like = element is str and isinstance(item, int | float) and not isinstance(item, bool)
        converted = str(item) if text_like else _scalar(item, element)
        if converted is None:
            need = _type_name(element)
            raise UserError(
                f"{where} must be {need}, a list of them or a table, got {_shown(item)}"
            )
        out.append(converted)
    return out


def _shown(value: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list"}
    return f"{kind.get(type(value), 'table' if isinstance(value, dict) else 'value')} {value!r}"
