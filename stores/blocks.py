"""The blocks the store writes and reads, and their padding to whole chunks (pure numpy)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .schema import FieldSpec
from .topk import TopKLogits


@dataclass
class ShardBlock:
    """Everything stored for one shard, rows in shard order (``n`` = shard count).

    ``keys`` list of n str; ``labels`` [n] int; ``view_labels`` [n, V] int (the class a view
    counts as correct for top-1, e.g. the dominant label of a mixed view); ``digests`` [n, V]
    uint64 (int64 is reinterpreted bit for bit; 0 means absent); ``aug`` {field: [n, V, ...]};
    ``teachers`` {name: TopKLogits [n, V, k]}; ``valid`` [n] bool, False for samples skipped as
    undecodable (their per-view arrays are stored as zeros). ``None`` means all valid.
    """

    keys: list[str]
    labels: np.ndarray
    view_labels: np.ndarray
    digests: np.ndarray
    aug: dict[str, np.ndarray]
    teachers: dict[str, TopKLogits]
    valid: np.ndarray | None = None


@dataclass
class ViewBlock:
    """One view of one shard: the fields of :class:`ShardBlock` with the view axis removed."""

    view: int
    keys: list[str]
    labels: np.ndarray
    view_labels: np.ndarray
    digests: np.ndarray
    aug: dict[str, np.ndarray]
    teachers: dict[str, TopKLogits]
    valid: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def pad_shard_block(
    block: ShardBlock,
    *,
    name: str,
    count: int,
    span: int,
    num_views: int,
    topk: int,
    index_dtype: str,
    aug_fields: dict[str, FieldSpec],
    teacher_names: list[str],
) -> dict[str, np.ndarray]:
    """Check ``block`` against the store's shapes and return every array's rows for the shard's
    whole chunk span (``span`` rows, padding zero / ``""`` / invalid), keyed by array path.

    ``ValueError`` names the first array whose shape or dtype does not fit.
    """
    n = count
    k = topk
    views = num_views
    where = f"shard {name!r}"

    def fit(arr: Any, shape: tuple[int, ...], dtype: Any, what: str) -> np.ndarray:
        a = _numpy(arr)
        if a.shape != shape:
            raise ValueError(f"{where}: {what} has shape {a.shape}, expected {shape}")
        dt = np.dtype(dtype)
        if a.dtype == np.int64 and dt == np.uint64:
            a = a.view(np.uint64)  # digests computed as signed 64-bit keep their bits
        elif not np.can_cast(a.dtype, dt, casting="same_kind") and a.dtype.kind != "b":
            raise ValueError(f"{where}: {what} has dtype {a.dtype}, cannot store as {dt}")
        out = np.zeros((span, *shape[1:]), dtype=dt)
        out[:n] = a
        return out

    if len(block.keys) != n:
        raise ValueError(f"{where}: {len(block.keys)} keys for {n} samples")
    if any(not k_ for k_ in block.keys):
        raise ValueError(f"{where}: a sample key is empty")
    valid = (
        np.ones(n, dtype=bool) if block.valid is None else fit(block.valid, (n,), bool, "valid")[:n]
    )
    keys = np.full(span, "", dtype=object)
    keys[:n] = list(block.keys)
    out: dict[str, np.ndarray] = {
        "keys": keys.astype(str),
        "labels": fit(block.labels, (n,), np.int32, "labels"),
        "view_labels": fit(block.view_labels, (n, views), np.int32, "view_labels"),
        "digests": fit(block.digests, (n, views), np.uint64, "digests"),
    }
    valid_padded = np.zeros(span, dtype=bool)
    valid_padded[:n] = valid
    out["valid"] = valid_padded
    expected_fields = set(aug_fields)
    if set(block.aug) != expected_fields:
        raise ValueError(
            f"{where}: augmentation fields {sorted(block.aug)} != store's {sorted(expected_fields)}"
        )
    for fname, fspec in aug_fields.items():
        out[f"aug/{fname}"] = fit(
            block.aug[fname], (n, views, *fspec.shape), fspec.dtype, f"aug/{fname}"
        )
    if set(block.teachers) != set(teacher_names):
        raise ValueError(f"{where}: teachers {sorted(block.teachers)} != store's {teacher_names}")
    idx = np.dtype(index_dtype)
    for tname in teacher_names:
        top = block.teachers[tname]
        base = f"teachers/{tname}"
        out[f"{base}/logprobs"] = fit(top.logprobs, (n, views, k), np.float16, f"{base}/logprobs")
        out[f"{base}/indices"] = fit(top.indices, (n, views, k), idx, f"{base}/indices")
        out[f"{base}/lse"] = fit(top.lse, (n, views), np.float32, f"{base}/lse")
    # Skipped samples: every per-view array holds zeros so their content is defined.
    invalid = ~valid_padded
    if invalid.any():
        for arr in out.values():
            if arr.ndim >= 2:
                arr[invalid] = 0
    return out
