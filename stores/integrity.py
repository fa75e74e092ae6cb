"""Is a store whole? Arrays present as promised, chunks present where shards are written, and
one-line errors for chunks that do not decode.

zarr answers a read of a missing array (hidden by consolidated metadata) or a missing chunk with
fill values, which look like data: zeros for logits, an empty key. So a store is checked when it
is opened: every array the attributes promise must have its own metadata with the promised
shape, dtype and chunks, and every chunk of every written shard must exist (format 3 writes
chunks even when they equal the fill value). Presence is one listing of the store, not a
stat per read. Damaged bytes are caught by the ``crc32c`` codec at decode time;
:func:`chunk_failure` turns whatever the codec raised into a sentence naming array and chunk.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import zarr

from .errors import StoreDamagedError
from .location import StoreLocation
from .schema import ArraySpec, ShardLayout, round_up


def check_arrays(where: str, group: zarr.Group, specs: dict[str, ArraySpec]) -> None:
    """``StoreDamagedError`` naming the first array of ``specs`` that is missing or not as
    promised (shape, dtype, chunks)."""
    for name, spec in specs.items():
        try:
            arr = group[name]
        except KeyError:
            raise StoreDamagedError(
                f"{where}: array {name} is missing; the store is damaged (re-dump it with "
                "civt-pipe dump-logits --overwrite)"
            ) from None
        if not isinstance(arr, zarr.Array):
            raise StoreDamagedError(f"{where}: {name} is not an array")
        dtype = "str" if arr.dtype.kind in "OTU" else np.dtype(arr.dtype).name
        for what, found, wanted in (
            ("shape", tuple(arr.shape), spec.shape),
            ("dtype", dtype, spec.dtype),
            ("chunks", tuple(arr.chunks), spec.chunks),
        ):
            if found != wanted:
                raise StoreDamagedError(
                    f"{where}: array {name} has {what} {found}, expected {wanted}"
                )


def _listed_chunks(files: Sequence[str]) -> dict[str, set[tuple[int, ...]]]:
    """Chunk coordinates per array from the store's file list (``<array>/c/<i>/<j>``, zarr v3
    default key encoding)."""
    found: dict[str, set[tuple[int, ...]]] = {}
    for name in files:
        array, sep, coords = name.rpartition("/c/")  # a teacher may be called "c" too
        if not sep:
            continue  # metadata
        try:
            found.setdefault(array, set()).add(tuple(int(p) for p in coords.split("/")))
        except ValueError:
            continue  # not a chunk file (editor backup, .DS_Store...)
    return found


def shard_chunks(
    spec: ArraySpec, layout: ShardLayout, chunk_rows: int
) -> Iterator[tuple[int, ...]]:
    """Coordinates of every chunk of ``spec`` that holds rows of shard ``layout`` (padding too)."""
    first = layout.row_offset // chunk_rows
    last = (layout.row_offset + round_up(layout.count, chunk_rows)) // chunk_rows
    rest = [range(-(-n // c)) for n, c in zip(spec.shape[1:], spec.chunks[1:], strict=True)]
    for coords in itertools.product(range(first, last), *rest):
        yield tuple(coords)


def check_chunks(
    where: str,
    root: StoreLocation,
    specs: dict[str, ArraySpec],
    written: Sequence[ShardLayout],
    chunk_rows: int,
) -> None:
    """``StoreDamagedError`` naming the first chunk of a written shard that is absent from
    ``root`` (one listing of the whole store: one request on object storage).

    ``written`` lists the shards whose flag is set; ``written`` itself is not checked (its
    chunks are the flags, read directly).
    """
    listed = _listed_chunks(root.list_files())
    for name, spec in specs.items():
        if name == "written":
            continue
        present = listed.get(name, set())
        for layout in written:
            for coords in shard_chunks(spec, layout, chunk_rows):
                if coords not in present:
                    raise StoreDamagedError(
                        f"{where}: chunk {coords} of array {name} (shard {layout.name}) is "
                        "missing although the shard is marked written; the store is damaged "
                        "(re-dump it with civt-pipe dump-logits --overwrite)"
                    )


def selected_chunks(arr: zarr.Array, selection: Any) -> Iterator[tuple[int, ...]]:
    """Coordinates of the chunks a basic selection (ints, slices, ``...``) touches."""
    parts = selection if isinstance(selection, tuple) else (selection,)
    if any(p is Ellipsis for p in parts):
        at = next(i for i, p in enumerate(parts) if p is Ellipsis)
        fill = (slice(None),) * (len(arr.shape) - len(parts) + 1)
        parts = (*parts[:at], *fill, *parts[at + 1 :])
    parts = (*parts, *(slice(None),) * (len(arr.shape) - len(parts)))
    ranges = []
    for part, size, chunk in zip(parts, arr.shape, arr.chunks, strict=True):
        if isinstance(part, slice):
            start, stop, _ = part.indices(size)
            ranges.append(range(start // chunk, -(-stop // chunk)) if stop > start else range(0))
        else:
            index = int(part) % size if size else 0
            ranges.append(range(index // chunk, index // chunk + 1))
    for coords in itertools.product(*ranges):
        yield tuple(coords)


def chunk_failure(
    where: str, name: str, arr: zarr.Array, selection: Any, err: Exception
) -> StoreDamagedError:
    """The one-line error for a read of ``selection`` from ``arr`` that raised ``err``.

    Reads each touched chunk alone to name the one that fails (this runs only after a failure).
    """
    reason = _reason(err)
    for coords in selected_chunks(arr, selection):
        try:
            arr.blocks[coords]
        except Exception as chunk_err:  # any codec failure: name the chunk, drop the traceback
            return StoreDamagedError(
                f"{where}: chunk {coords} of array {name} is damaged ({_reason(chunk_err)}); "
                "re-dump the store with civt-pipe dump-logits --overwrite"
            )
    return StoreDamagedError(f"{where}: array {name} cannot be read ({reason})")


def _reason(err: Exception) -> str:
    text = str(err)
    if "checksum" in text.lower():
        return "checksum mismatch"
    first = text.splitlines()[0] if text else ""
    return f"{type(err).__name__}: {first[:120]}" if first else type(err).__name__
