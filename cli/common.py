"""What every command shares: user-error handling, JSON output, device choice."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from ..pipeline.runtime.errors import USER_ERRORS
from ..pipeline.runtime.json_text import json_text

F = TypeVar("F", bound=Callable[..., Any])


def error_line(message: str) -> None:
    """Print ``civt-pipe: error: MESSAGE`` on stderr as one line (newlines folded)."""
    typer.echo(f"civt-pipe: error: {' '.join(str(message).split())}", err=True)


def user_errors(fn: F) -> F:
    """Turn a user error (``UserError`` or the store's ``StoreError``) into one line on stderr
    and its exit code, 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as err:
            error_line(str(err))
            raise typer.Exit(code=getattr(err, "exit_code", 2)) from None

    return wrapper  # type: ignore[return-value]


def emit_json(obj: Any) -> None:
    """Print one JSON object on stdout (the machine-readable result of a command; non-finite
    figures as ``null``: :func:`~civt_pipe.pipeline.runtime.json_text.json_text`)."""
    sys.stdout.write(json_text(obj) + "\n")
    sys.stdout.flush()
