"""``inspect-store --verify --data SHARDS``: every label a store recorded against its shards.

Apart from :mod:`.labels` because it binds the store (:func:`.binding.bind_store`), and the
binding's replay (:mod:`.segments`) uses :mod:`.labels` itself.
"""

from __future__ import annotations

import numpy as np

from .binding import bind_store
from .labels import check_recorded_labels


def check_store_labels(store_path: str, data: str) -> int:
    """``inspect-store --verify --data SHARDS``: the store must be of these shards (every check
    of :func:`.binding.bind_store`) and every valid row's recorded label must be the label the
    shard holds now (read from the ``.cls`` members alone, no image decoded). Returns the
    number of rows compared."""
    from ...stores.logit_store import LogitStore
    from ..data.imageio import tar_members
    from ..data.shard_set import member_labels, resolve_complete_shards

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
