"""The store's own exception for mistakes a user can cause (missing, incompatible, incomplete
store; a block that does not fit). The store is a leaf, so it cannot raise the pipeline's
``UserError``; the pipeline treats both alike (``civt_pipe.pipeline.runtime.errors.USER_ERRORS``)
and the CLI prints either as one line with exit code 2.
"""

from __future__ import annotations


class StoreError(Exception):
    """A problem with a logit store or what is written to it, named in one sentence, e.g.
    ``"no logit store at /runs/s.zarr"``."""

    exit_code: int = 2


class StoreVersionError(StoreError):
    """A logit store of another (older, newer or unknown) format version.

    A subclass so that callers which treat "not a store" generically (``dump-logits`` resuming)
    can let this message, which says what to do, through unchanged.
    """


class StoreDamagedError(StoreError):
    """A logit store whose data is missing or corrupt (an array, a chunk, a checksum).

    A subclass so that ``dump-logits`` can tell "damaged store, re-dump it" from "not a store".
    """


class StoreUnreachableError(StoreError):
    """Remote storage that did not answer (``cannot reach URL: REASON``); ``reason`` is the
    backend's own words, so a write that lost its connection can say ``cannot write`` instead."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason
