"""``predict``'s output files: the collected rows as JSONL, CSV, ``.npz`` or ``.npy``.

Pure formatting over numpy arrays plus one atomic write; the pass that fills :class:`Rows` is
in :mod:`.run`. Floats are written with float32's 7 significant digits.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...runtime.atomic import atomic_write_bytes, atomic_writer


@dataclass(frozen=True, slots=True)
class HeadRows:
    """One head's predictions, row-aligned with :attr:`Rows.keys`."""

    classes: np.ndarray
    """int64 ``[N, k]``: class indices, best first."""
    probs: np.ndarray
    """float32 ``[N, k]``: their softmax probabilities."""
    logits: np.ndarray | None
    """float32 ``[N, C]``: every class's logit (``--logits`` or ``.npy``), else None."""


@dataclass(frozen=True, slots=True)
class Rows:
    """Every image's predictions in the shard set's order (shard, then position in the tar)."""

    keys: list[str]
    labels: np.ndarray
    """int64 ``[N]``: the shards' labels."""
    heads: dict[str, HeadRows]
    class_names: tuple[str, ...]


def _g(value: float) -> float:
    return float(f"{value:.7g}")


def _json_lines(rows: Rows) -> Iterator[str]:
    for i, key in enumerate(rows.keys):
        record: dict[str, Any] = {"key": key, "label": int(rows.labels[i])}
        for name, head in rows.heads.items():
            entry: dict[str, Any] = {
                "classes": head.classes[i].tolist(),
                "probs": [_g(p) for p in head.probs[i].tolist()],
            }
            if head.logits is not None:
                entry["logits"] = [_g(v) for v in head.logits[i].tolist()]
            record[name] = entry
        yield json.dumps(record, separators=(",", ":")) + "\n"


def _csv_text(rows: Rows) -> str:
    header = ["key", "label"]
    for name, head in rows.heads.items():
        for rank in range(1, head.classes.shape[1] + 1):
            header += [f"{name}.class{rank}", f"{name}.prob{rank}"]
        if head.logits is not None:
            header += [f"{name}.logit{c}" for c in range(head.logits.shape[1])]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for i, key in enumerate(rows.keys):
        line: list[Any] = [key, int(rows.labels[i])]
        for head in rows.heads.values():
            for c, p in zip(head.classes[i].tolist(), head.probs[i].tolist(), strict=True):
                line += [c, _g(p)]
            if head.logits is not None:
                line += [_g(v) for v in head.logits[i].tolist()]
        writer.writerow(line)
    return buffer.getvalue()


def npz_arrays(rows: Rows) -> dict[str, np.ndarray]:
    """The ``.npz`` members: ``keys``, ``labels``, ``class_names`` and per head
    ``HEAD.classes``, ``HEAD.probs`` (and ``HEAD.logits``)."""
    arrays: dict[str, np.ndarray] = {
        "keys": np.array(rows.keys, dtype=str),
        "labels": rows.labels,
        "class_names": np.array(rows.class_names, dtype=str),
    }
    for name, head in rows.heads.items():
        arrays[f"{name}.classes"] = head.classes
        arrays[f"{name}.probs"] = head.probs
        if head.logits is not None:
            arrays[f"{name}.logits"] = head.logits
    return arrays


def write_rows(rows: Rows, out: Path) -> None:
    """Write ``rows`` to ``out`` in the form its suffix names (``.npy``: the one head's logits
    ``[N, C]``), atomically."""
    suffix = out.suffix
    if suffix == ".jsonl":
        with atomic_writer(out) as f:
            for line in _json_lines(rows):
                f.write(line.encode())
    elif suffix == ".csv":
        atomic_write_bytes(out, _csv_text(rows).encode())
    elif suffix == ".npz":
        with atomic_writer(out) as f:
            np.savez(f, **npz_arrays(rows))  # type: ignore[arg-type]
    else:
        (head,) = rows.heads.values()
        assert head.logits is not None
        with atomic_writer(out) as f:
            np.save(f, head.logits)
