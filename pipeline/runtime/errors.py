"""The one exception type for mistakes a user can cause.

Anything raised as :class:`UserError` is shown by the CLI as a single line on stderr with a
non-zero exit and no traceback. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (path, option, data, checkpoint, store).

    The message is one sentence naming the offending thing, e.g.
    ``"shard directory /data/train holds no .tar files"``.
    """

    exit_code: int = 2
