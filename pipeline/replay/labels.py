"""The shards' labels against the labels a store recorded when ``dump-logits`` read them.

A store keeps every sample's label (``labels``) beside its views. A ``.cls`` changed in a tar
after the dump keeps the shard's size, index entry and key digest, so no other check sees it;
comparing the two labels does. One vectorised comparison per block (replay) or per shard
(``inspect-store --verify --data``); a mismatch is one line naming the sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..runtime.errors import UserError


def check_recorded_labels(
    shard: str,
    keys: Sequence[str],
    labels: np.ndarray,
    recorded: np.ndarray,
    valid: np.ndarray,
) -> None:
    """Raise :class:`UserError` for the first valid row whose shard label is not the recorded one.

    Args:
        shard: the shard's name, for the message.
        keys: the rows' sample keys.
        labels: int ``[n]`` the labels the shard holds now.
        recorded: int ``[n]`` the labels the store recorded for the same rows.
        valid: bool ``[n]`` rows the store holds views of (a skipped row recorded nothing).
    """
    bad = np.flatnonzero(
        np.asarray(valid, dtype=bool) & (np.asarray(labels) != np.asarray(recorded))
    )
    if len(bad):
        i = int(bad[0])
        raise UserError(
            f"shard {shard}: sample {keys[i]!r} is labelled {int(labels[i])} but the store "
            f"recorded {int(recorded[i])} when dump-logits read it; the shards changed since "
            "the dump (restore them, or dump-logits again)"
        )
