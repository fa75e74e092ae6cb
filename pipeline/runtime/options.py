"""Config fields that describe themselves: help text, command-line flag, and the resume rule.

Every stage's configuration is a typed dataclass. Declaring a field with :func:`option` records,
once, what the command line shows for it and whether a resumed run may change it:

    epochs: int = option(10, help="Epochs; epoch e uses view e mod V.", minimum=1)
    workers: int = option(2, help="Data-loading processes per rank.", resume="may-change")

``resume="must-match"`` (the default) is the safe side: a field that changes the weights must equal
the saved run's value, so a new option that changes results can never resume silently. Only
fields that provably do not change what is computed (paths of outputs, progress bars, worker and
thread counts, logging cadence) say ``"may-change"``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import MISSING, Field
from pathlib import Path
from typing import Any, Literal

from .errors import UserError

Resume = Literal["must-match", "may-change"]
"""Whether a resumed run may change a field (``must-match``: it must equal the saved value)."""

_KEY = "civt_pipe.option"

MAX_THREADS = 1024
"""Ceiling of every ``--threads`` (torch takes a C int; more threads than this is a typo)."""
MAX_WORKERS = 256
"""Ceiling of every ``--workers``: each one is a process with its own copy of the pipeline."""
_INT64 = 2**63


@dataclasses.dataclass(frozen=True, slots=True)
class OptionInfo:
    """What :func:`option` records about a config field."""

    help: str
    """One line for ``--help``."""
    resume: Resume = "must-match"
    flag: str | None = None
    """The command-line flag (default: ``--field-name``); ``""`` keeps the field off the CLI."""
    minimum: float | None = None
    """Smallest allowed value of a number (checked by the CLI and :func:`check_numbers`)."""
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    """The allowed values of a string field."""


def option(
    default: Any = MISSING,
    *,
    help: str,
    resume: Resume = "must-match",
    flag: str | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: tuple[str, ...] | None = None,
    default_factory: Any = MISSING,
) -> Any:
    """A dataclass field carrying its :class:`OptionInfo` (use like ``dataclasses.field``)."""
    info = OptionInfo(
        help=help, resume=resume, flag=flag, minimum=minimum, maximum=maximum, choices=choices
    )
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={_KEY: info})
    return dataclasses.field(default=default, metadata={_KEY: info})


def option_info(f: Field[Any]) -> OptionInfo | None:
    """The :class:`OptionInfo` of a dataclass field, or None for a plain field."""
    info = f.metadata.get(_KEY)
    return info if isinstance(info, OptionInfo) else None


def flag_of(f: Field[Any], info: OptionInfo | None) -> str:
    """The command-line flag of a field: its declared ``flag`` or ``--field-name``."""
    return (info.flag if info is not None else None) or "--" + f.name.replace("_", "-")


def negated_flag(flag: str) -> str:
    """The flag that turns a boolean field off: ``--progress`` → ``--no-progress``."""
    return "--no-" + flag.removeprefix("--")


def field_default(f: Field[Any]) -> Any:
    """The default of a dataclass field (its factory called), or ``MISSING`` for a required one."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def resume_mismatch(
    config_type: type, saved: Mapping[str, Any], current: Mapping[str, Any]
) -> str | None:
    """The first field of ``config_type`` that must match on resume but differs, else None.

    ``saved``/``current`` are the configs as plain JSON-like dicts (``dataclasses.asdict``). A
    field without :func:`option` metadata counts as ``must-match``; a field missing from the
    saved dict (a run from an older version) must then equal its default.
    """
    for f in dataclasses.fields(config_type):
        info = option_info(f)
        if info is not None and info.resume == "may-change":
            continue
        if f.name not in current:
            continue
        fallback = field_default(f)
        if saved.get(f.name, None if fallback is MISSING else fallback) != current[f.name]:
            return f.name
    return None


def check_resumable(checkpoint: Path) -> None:
    """The one rule for ``--resume`` with nothing to resume, in every trainer: refused in one
    line (a typo in ``--out`` must not silently start a long run afresh). A caller that wants
    "continue if there is a run" passes ``resume=checkpoint.is_file()`` instead."""
    if not checkpoint.is_file():
        raise UserError(f"--resume: {checkpoint} does not exist; start without --resume")


def check_numbers(config: Any) -> None:
    """Raise :class:`UserError` for the first numeric field that is not finite or out of range.

    Every number must be finite, and every integer must fit in 64 bits (torch and numpy hold
    it in one), whether the field declares a range or not; declared ranges are checked too.
    """
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        info = option_info(f)
        flag = flag_of(f, info)
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{flag} must be a finite number, got {value}")
        # The declared range first: "--epochs must be at least 1" says more than the 64 bits.
        if info is not None and info.minimum is not None and value < info.minimum:
            raise UserError(f"{flag} must be at least {info.minimum:g}, got {value}")
        if info is not None and info.maximum is not None and value > info.maximum:
            raise UserError(f"{flag} must be at most {info.maximum:g}, got {value}")
        if isinstance(value, int) and value >= _INT64:
            raise UserError(f"{flag} must be at most {_INT64 - 1} (2**63 - 1), got {value}")
        if isinstance(value, int) and value < -_INT64:
            raise UserError(f"{flag} must be at least {-_INT64} (-2**63), got {value}")


def check_choices(config: Any) -> None:
    """Raise :class:`UserError` for the first field whose value is not one of its ``choices``.

    ``None`` passes: an optional field left unset takes a default chosen elsewhere.
    """
    for f in dataclasses.fields(config):
        info = option_info(f)
        value = getattr(config, f.name)
        if info is None or info.choices is None or value is None or value in info.choices:
            continue
        raise UserError(
            f"{flag_of(f, info)} must be one of {', '.join(info.choices)}, got {value!r}"
        )
