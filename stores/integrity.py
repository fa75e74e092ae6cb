"""Is a store whole? Arrays present as promised, files present where shards are written, and
one-line errors for chunks that do not decode.

zarr answers a read of a missing array (hidden by consolidated metadata), a missing file or a
chunk missing from a sharded file's index with fill values, which look like data: zeros for
logits, an empty key. So a store is checked when it is opened: every array the attributes
promise must have its own metadata with the promised shape, dtype, chunks and shards, and every
file of every written shard must exist (chunks are written even when they equal the fill
value). Presence is one listing of the store, not a stat per read; that every inner chunk is in
its file's index is checked by :func:`check_indexes` (``inspect-store --verify``). Damaged bytes
are caught by the ``crc32c`` codecs at decode time (one on each inner chunk, one on each file's
index); :func:`chunk_failure` turns whatever the codec raised into a sentence naming the array
and the view (or the file whose index is damaged).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import zarr
from numcodecs.checksum32 import CRC32C

from .errors import StoreDamagedError
from .location import StoreLocation
from .schema import ArraySpec, ShardLayout, round_up


def check_arrays(where: str, group: zarr.Group, specs: dict[str, ArraySpec]) -> None:
    """``StoreDamagedError`` naming the first array of ``specs`` that is missing or not as
    promised (shape, dtype, chunks, shards)."""
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
            ("shards", None if arr.shards is None else tuple(arr.shards), spec.shards),
        ):
            if found != wanted:
                raise StoreDamagedError(
                    f"{where}: array {name} has {what} {found}, expected {wanted}"
                )


_EMPTY = 2**64 - 1
"""Offset and length of an inner chunk that a sharded file's index lists as absent."""

_INDEX_ENTRY_BYTES = 16
"""Per inner chunk, the index holds offset and length as little-endian uint64 (zarr v3 spec)."""

_CHECKSUM_BYTES = 4
"""The index ends with its crc32c (our index codecs: ``bytes``, ``crc32c``)."""

_RE_DUMP = "re-dump the store with civt-pipe dump-logits --overwrite"


def file_key(name: str, coords: tuple[int, ...]) -> str:
    """The path of one file of array ``name`` inside the store (zarr v3 default key encoding)."""
    return f"{name}/c/" + "/".join(str(c) for c in coords)


def _listed_files(files: dict[str, int]) -> dict[str, dict[tuple[int, ...], int]]:
    """File coordinates and sizes per array from the store's file list (``<array>/c/<i>/<j>``,
    zarr v3 default key encoding)."""
    found: dict[str, dict[tuple[int, ...], int]] = {}
    for name, size in files.items():
        array, sep, coords = name.rpartition("/c/")  # a teacher may be called "c" too
        if not sep:
            continue  # metadata
        try:
            found.setdefault(array, {})[tuple(int(p) for p in coords.split("/"))] = size
        except ValueError:
            continue  # not a chunk file (editor backup, .DS_Store...)
    return found


def shard_files(spec: ArraySpec, layout: ShardLayout, chunk_rows: int) -> Iterator[tuple[int, ...]]:
    """Coordinates of every file of ``spec`` that holds rows of shard ``layout`` (padding too):
    one per ``chunk_rows`` rows, each holding every view when the array is sharded."""
    file = spec.file_shape
    first = layout.row_offset // file[0]
    last = (layout.row_offset + round_up(layout.count, chunk_rows)) // file[0]
    rest = [range(-(-n // c)) for n, c in zip(spec.shape[1:], file[1:], strict=True)]
    for coords in itertools.product(range(first, last), *rest):
        yield tuple(coords)


def _index_bytes(chunks: tuple[int, ...], shards: tuple[int, ...]) -> int:
    """Size of a sharded file's index: 16 bytes per inner chunk plus the checksum."""
    per_file = math.prod(s // c for s, c in zip(shards, chunks, strict=True))
    return _INDEX_ENTRY_BYTES * per_file + _CHECKSUM_BYTES


def _truncated(where: str, key: str, name: str, size: int, index: int) -> StoreDamagedError:
    return StoreDamagedError(
        f"{where}: file {key} of array {name} is truncated ({size} bytes, shorter than its "
        f"{index}-byte index); {_RE_DUMP}"
    )


def check_files(
    where: str,
    root: StoreLocation,
    specs: dict[str, ArraySpec],
    written: Sequence[ShardLayout],
    chunk_rows: int,
) -> None:
    """``StoreDamagedError`` naming the first file of a written shard that is absent from
    ``root``, or a sharded file shorter than its index (one listing of the whole store, with
    sizes: one request on object storage).

    A truncated sharded file must be caught here: zarr reads an empty one as fill values.
    ``written`` lists the shards whose flag is set; ``written`` itself is not checked (its
    chunks are the flags, read directly).
    """
    listed = _listed_files(root.files())
    for name, spec in specs.items():
        if name == "written":
            continue
        present = listed.get(name, {})
        index = 0 if spec.shards is None else _index_bytes(spec.chunks, spec.shards)
        for layout in written:
            for coords in shard_files(spec, layout, chunk_rows):
                key = file_key(name, coords)
                if coords not in present:
                    raise StoreDamagedError(
                        f"{where}: file {key} of array {name} (shard {layout.name}) is missing "
                        "although the shard is marked written; the store is damaged (re-dump "
                        "it with civt-pipe dump-logits --overwrite)"
                    )
                if present[coords] < index:
                    raise _truncated(where, key, name, present[coords], index)


def read_shard_index(
    where: str,
    root: StoreLocation,
    name: str,
    chunks: tuple[int, ...],
    shards: tuple[int, ...],
    coords: tuple[int, ...],
) -> np.ndarray:
    """The index of one sharded file: ``[*chunks per file, 2]`` offset and length of each inner
    chunk (``2**64 - 1`` = absent). One ranged read of the file's tail.

    ``StoreDamagedError`` when the file is shorter than its index or the index fails its
    ``crc32c``: no view of the file's rows can then be read.
    """
    per_file = tuple(s // c for s, c in zip(shards, chunks, strict=True))
    size = _index_bytes(chunks, shards)
    key = file_key(name, coords)
    with root.child(key).open_read() as fh:
        total = fh.seek(0, 2)
        if total < size:
            raise _truncated(where, key, name, total, size)
        fh.seek(total - size)
        tail = fh.read(size)
    try:
        CRC32C().decode(tail)  # checks the trailing crc32c (little-endian, as zarr writes it)
    except RuntimeError:  # numcodecs' checksum mismatch
        raise StoreDamagedError(
            f"{where}: the index of file {key} of array {name} is damaged (checksum mismatch), "
            f"so no view of its rows can be read; {_RE_DUMP}"
        ) from None
    return np.frombuffer(tail[:-_CHECKSUM_BYTES], dtype="<u8").reshape(*per_file, 2)


def check_indexes(
    where: str,
    root: StoreLocation,
    specs: dict[str, ArraySpec],
    written: Sequence[ShardLayout],
    chunk_rows: int,
) -> None:
    """``StoreDamagedError`` naming the first sharded file of a written shard whose index is
    damaged or lacks an inner chunk (one read per file: ``inspect-store --verify`` only).

    civt-pipe writes every file whole with every inner chunk, so an absent one means the file
    was changed by something else; zarr would read it as fill values.
    """
    for name, spec in specs.items():
        if spec.shards is None:
            continue
        for layout in written:
            for coords in shard_files(spec, layout, chunk_rows):
                index = read_shard_index(where, root, name, spec.chunks, spec.shards, coords)
                absent = np.argwhere(index[..., 0] == _EMPTY)
                if absent.size:
                    inner = tuple(int(i) for i in absent[0])
                    raise StoreDamagedError(
                        f"{where}: {_view_of(inner)}inner chunk {inner} of file "
                        f"{file_key(name, coords)} of array {name} (shard {layout.name}) is "
                        f"missing from the file; {_RE_DUMP}"
                    )


def selected_chunks(arr: zarr.Array, selection: Any) -> Iterator[tuple[int, ...]]:
    """Coordinates of the (inner) chunks a basic selection (ints, slices, ``...``) touches."""
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


def _view_of(coords: tuple[int, ...]) -> str:
    # Per-view arrays have one view per inner chunk along axis 1.
    return f"view {coords[1]}, " if len(coords) > 1 else ""


def chunk_failure(
    where: str,
    root: StoreLocation,
    name: str,
    arr: zarr.Array,
    selection: Any,
    err: Exception,
) -> StoreDamagedError:
    """The one-line error for a read of ``selection`` from ``arr`` that raised ``err``.

    Reads each touched chunk alone (a sharded file's index first) to name the one that fails:
    the view and chunk, or the file whose index is damaged. Runs only after a failure.
    """
    reason = _reason(err)
    for coords in selected_chunks(arr, selection):
        if arr.shards is not None:
            file = tuple(
                c * ch // s for c, ch, s in zip(coords, arr.chunks, arr.shards, strict=True)
            )
            try:
                read_shard_index(where, root, name, arr.chunks, arr.shards, file)
            except StoreDamagedError as index_err:
                return index_err
        region = tuple(
            slice(c * ch, min((c + 1) * ch, n))
            for c, ch, n in zip(coords, arr.chunks, arr.shape, strict=True)
        )
        try:
            arr[region]
        except Exception as chunk_err:  # any codec failure: name the chunk, drop the traceback
            return StoreDamagedError(
                f"{where}: {_view_of(coords)}chunk {coords} of array {name} is damaged "
                f"({_reason(chunk_err)}); {_RE_DUMP}"
            )
    return StoreDamagedError(f"{where}: array {name} cannot be read ({reason})")


def _reason(err: Exception) -> str:
    text = str(err)
    if "checksum" in text.lower():
        return "checksum mismatch"
    first = text.splitlines()[0] if text else ""
    return f"{type(err).__name__}: {first[:120]}" if first else type(err).__name__
