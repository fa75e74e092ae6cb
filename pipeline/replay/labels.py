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


def check_store_labels(store_path: str, data: str) -> int:
    """``inspect-store --verify --data SHARDS``: the store must be of these shards (every check
    of :func:`.binding.bind_store`) and every valid row's recorded label must be the label the
    shard holds now (read from the ``.cls`` members alone, no image decoded). Returns the
    number of rows compared."""
    from ...stores.logit_store import LogitStore
    from ..data.imageio import tar_members
    from ..data.shard_set import member_labels, resolve_complete_shards
    from .binding import bind_store

    shard_set = resolve_complete_shards(data)
    bind_store(store_path, data, shard_set)
    store = LogitStore.open(store_path, check=False)  # bind_store has checked it whole
    compared = 0
    for layout, path in zip(store.shards, shard_set.paths, strict=True):
        rows = slice(layout.row_offset, layout.row_offset + layout.count)
        keys = [str(k) for k in store.read("keys", rows).tolist()]
        now = member_labels(tar_members(path))
        labels = np.array([now.get(k, -1) for k in keys], dtype=np.int64)
        valid = store.read("valid", rows).astype(bool)
        check_recorded_labels(layout.name, keys, labels, store.read("labels", rows), valid)
        compared += int(valid.sum())
    return compared
