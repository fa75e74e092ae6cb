"""What every command shares: user-error handling, JSON output, device choice."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from ..pipeline.runtime.errors import USER_ERRORS

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Turn a user error (``UserError`` or the store's ``StoreError``) into one line on stderr
    and its exit code, 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as err:
            typer.echo(f"civt-pipe: error: {err}", err=True)
            raise typer.Exit(code=getattr(err, "exit_code", 2)) from None

    return wrapper  # type: ignore[return-value]


def emit_json(obj: Any) -> None:
    """Print one JSON object on stdout (the machine-readable result of a command)."""
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()
