"""``inspect-store``: figures about a logit store, and a check of every invariant.

Both walk the store shard by shard, so memory stays bounded by one shard's block whatever the
store's size (only the set of keys, for the uniqueness check, grows with the dataset).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import StoreError
from .integrity import check_indexes
from .logit_store import LogitStore
from .schema import FORMAT_VERSION, round_up
from .topk import leftover_mass, target_entropy

KEPT_MASS_SLACK = 1e-6
"""How far above 1 the stored top-k probabilities may sum: the float32 rounding of
``log_softmax`` before the round-down to float16 (~1e-7 per class)."""


def inspect_store(path: str | Path, *, verify: bool = False) -> dict[str, Any]:
    """A JSON-ready report on the store at ``path`` (statistics over written shards only).

    Opening the store checks that no array or chunk of a written shard is missing, and every
    chunk read is checksummed, so no figure comes from fill values or damaged bytes (a
    ``StoreDamagedError`` names the array and chunk instead).

    Per teacher: ``top1`` (share of valid (sample, view) pairs whose arg-max is the view
    label), ``mean_entropy`` (nats, of the τ=1 target with the leftover spread uniformly) and
    ``mean_leftover`` (mass outside the top k). ``agreement``: per teacher pair, the share of
    views on which both arg-maxes agree. ``num_files``: files under the store (metadata
    included; format 4 keeps one file per (shard, array)). With ``verify``,
    :func:`verify_store` runs first and the report carries ``"verified": true``.
    """
    if verify:
        verify_store(path)
    store = LogitStore.open(path)
    names = store.teacher_names
    num_classes = store.num_classes
    flags = store.written_flags()
    hits = dict.fromkeys(names, 0)
    entropy = dict.fromkeys(names, 0.0)
    leftover = dict.fromkeys(names, 0.0)
    agree = {pair: 0 for pair in itertools.combinations(names, 2)}
    counted = 0
    written_samples = 0
    skipped = 0
    for layout, ok in zip(store.shards, flags, strict=True):
        if not ok:
            continue
        rows = slice(layout.row_offset, layout.row_offset + layout.count)
        valid = store.read("valid", rows).astype(bool)
        written_samples += layout.count
        skipped += int((~valid).sum())
        view_labels = store.read("view_labels", rows)[valid]
        counted += int(view_labels.size)
        top1: dict[str, np.ndarray] = {}
        for t in names:
            base = f"teachers/{t}"
            logprobs = torch.from_numpy(store.read(f"{base}/logprobs", rows)[valid])
            indices = store.read(f"{base}/indices", rows)[valid]
            top1[t] = indices[..., 0]
            hits[t] += int((top1[t] == view_labels).sum())
            entropy[t] += float(target_entropy(logprobs, num_classes).sum())
            leftover[t] += float(leftover_mass(logprobs).sum())
        for a, b in agree:
            agree[(a, b)] += int((top1[a] == top1[b]).sum())

    def mean(total: float) -> float:
        return total / counted if counted else 0.0

    views = store.num_views
    sample_views = written_samples * views
    files = store.location.files()
    bytes_on_disk = sum(files.values())
    teacher_reports = []
    teacher_bytes_total = 0
    for info in store.teachers:
        # From the listing in hand: a second listing per teacher costs a remote call each.
        prefix = f"teachers/{info.name}/"
        t_bytes = sum(size for path, size in files.items() if path.startswith(prefix))
        teacher_bytes_total += t_bytes
        teacher_reports.append(
            {
                "name": info.name,
                "arch": info.arch,
                "checkpoint_sha256": info.checkpoint_sha256,
                "top1": mean(hits[info.name]),
                "mean_entropy": mean(entropy[info.name]),
                "mean_leftover": mean(leftover[info.name]),
                "bytes_on_disk": t_bytes,
                "bytes_per_sample_view": t_bytes / sample_views if sample_views else 0.0,
            }
        )
    dense_bytes = sample_views * len(names) * num_classes * 4
    missing = [s.name for s, ok in zip(store.shards, flags, strict=True) if not ok]
    report: dict[str, Any] = {
        "path": str(store.path),
        "format_version": int(store.attrs["format_version"]),
        "num_shards": len(store.shards),
        "num_samples": store.num_samples,
        "num_written_samples": written_samples,
        "num_skipped": skipped,
        "num_classes": num_classes,
        "num_views": views,
        "topk": store.topk,
        "chunk_rows": store.chunk_rows,
        "complete": not missing,
        "finalized": store.is_finalized,
        "missing_shards": missing,
        "teachers": teacher_reports,
        "agreement": [{"teachers": [a, b], "agreement": mean(n)} for (a, b), n in agree.items()],
        "bytes_on_disk": bytes_on_disk,
        "num_files": len(files),
        "bytes_per_sample_view": bytes_on_disk / sample_views if sample_views else 0.0,
        "bytes_per_sample_view_teacher": (
            teacher_bytes_total / (sample_views * len(names)) if sample_views else 0.0
        ),
        "dense_float32_bytes": dense_bytes,
        "ratio_to_dense_float32": teacher_bytes_total / dense_bytes if dense_bytes else 0.0,
        "attrs": store.user_attrs,
    }
    if verify:
        report["verified"] = True
    return report


def _first(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(mask)[0])


def _where(row_view: tuple[int, ...]) -> str:
    return f"row {row_view[0]}" + (f" view {row_view[1]}" if len(row_view) > 1 else "")


def verify_store(path: str | Path) -> None:
    """Check every invariant; ``StoreError`` naming the first violation.

    Layout (offsets chunk-aligned, disjoint, arrays shaped, chunked and sharded as the attributes
    say, every file of a written shard present: checked by ``LogitStore.open``), every shard
    written, the store finalized, every sharded file's index whole and listing every inner chunk,
    every chunk's checksum (each is decoded once), keys non-empty and unique, labels and view
    labels in range, digests non-zero on valid rows, and per teacher: log-probabilities finite,
    ≤ 0, descending and with ``Σ exp ≤ 1`` (up to :data:`KEPT_MASS_SLACK`), indices in range
    and distinct, ``lse`` finite.
    """
    store = LogitStore.open(path)
    where = str(store.path)
    chunk = store.chunk_rows
    num_classes = store.num_classes
    rows_total = store.num_rows

    # Layout and schema.
    if store.attrs["format_version"] != FORMAT_VERSION:
        raise StoreError(f"{where}: format version {store.attrs['format_version']} is not current")
    end = 0
    for s in store.shards:
        if s.row_offset % chunk:
            raise StoreError(f"{where}: shard {s.name!r} does not start on a chunk boundary")
        if s.row_offset < end:
            raise StoreError(f"{where}: shard {s.name!r} overlaps the previous shard's chunks")
        end = s.row_offset + round_up(s.count, chunk)
    if end > rows_total:
        raise StoreError(f"{where}: shards need {end} rows but the arrays have {rows_total}")
    missing = store.missing_shards()
    if missing:
        raise StoreError(f"{where}: shard {missing[0]!r} is not written ({len(missing)} missing)")
    if not store.is_finalized:
        raise StoreError(
            f"{where}: every shard is written but the store was never finalized (dump-logits "
            "stopped before its last step); run the same dump-logits command again"
        )
    check_indexes(where, store.location, store.array_specs, store.shards, chunk)

    seen: set[str] = set()
    for s in store.shards:
        block = store.read_shard(s.name)
        at = f"{where}: shard {s.name!r}"
        for pos, key in enumerate(block.keys):
            if not key:
                raise StoreError(f"{at} row {pos}: empty key")
            if key in seen:
                raise StoreError(f"{at} row {pos}: key {key!r} appears twice")
            seen.add(key)
        valid = np.asarray(block.valid, dtype=bool)
        labels = block.labels[valid]
        bad = (labels < 0) | (labels >= num_classes)
        if bad.any():
            pos = int(np.flatnonzero(valid)[_first(bad)[0]])
            raise StoreError(f"{at} row {pos}: label {block.labels[pos]} out of range")
        positions = np.flatnonzero(valid)

        def fail(
            mask: np.ndarray | np.bool_, what: str, at: str = at, positions: np.ndarray = positions
        ) -> None:
            # numpy types a reduction such as `.all(-1)` as "array or scalar": take both.
            rows = np.asarray(mask)
            if rows.any():
                hit = _first(rows)
                raise StoreError(f"{at} {_where((int(positions[hit[0]]), *hit[1:2]))}: {what}")

        vl = block.view_labels[valid]
        fail((vl < 0) | (vl >= num_classes), "view label out of range")
        fail(block.digests[valid] == 0, "view digest missing (0)")
        for t, top in block.teachers.items():
            logp = top.logprobs.numpy()[valid].astype(np.float64)
            indices = top.indices.numpy()[valid].astype(np.int64)
            lse = top.lse.numpy()[valid]
            fail(~np.isfinite(logp).all(-1), f"teacher {t!r}: non-finite top-k log-probability")
            fail((logp > 0).any(-1), f"teacher {t!r}: log-probability above 0")
            fail(
                (np.diff(logp, axis=-1) > 0).any(-1),
                f"teacher {t!r}: log-probabilities not descending",
            )
            fail(
                np.exp(logp).sum(-1) > 1.0 + KEPT_MASS_SLACK,
                f"teacher {t!r}: top-k probabilities sum above 1",
            )
            fail(
                ((indices < 0) | (indices >= num_classes)).any(-1),
                f"teacher {t!r}: class id out of range",
            )
            ordered = np.sort(indices, axis=-1)
            fail((np.diff(ordered, axis=-1) == 0).any(-1), f"teacher {t!r}: class ids not distinct")
            fail(~np.isfinite(lse), f"teacher {t!r}: non-finite lse")
