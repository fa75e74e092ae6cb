"""The exception types for mistakes a user can cause.

Anything raised as :class:`UserError`, or as the store's ``StoreError`` (both:
:data:`USER_ERRORS`), is shown by the CLI as a single line on stderr with a non-zero exit and no
traceback. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from ...stores.errors import StoreError


class UserError(Exception):
    """A problem with the user's input (path, option, data, checkpoint, store).

    The message is one sentence naming the offending thing, e.g.
    ``"shard directory /data/train holds no .tar files"``.
    """

    exit_code: int = 2


USER_ERRORS: tuple[type[Exception], ...] = (UserError, StoreError)
"""Every exception a user can cause. The logit store is a leaf and raises its own
:class:`~civt_pipe.stores.errors.StoreError`, so code that turns user errors into one clean line
(the CLI, worker failure capture, rank-0 broadcasts) catches this tuple, not ``UserError`` alone."""
