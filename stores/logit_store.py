"""The zarr v3 logit store: create, write one shard at a time, read one view, finalize.

Concurrency rules (docs/architecture.md, docs/store-format.md): every shard owns whole files: a
per-view array is sharded (zarr's sharding codec) into one file per ``chunk_rows`` rows holding
every view, and shards start on a ``chunk_rows`` boundary, so writers of different shards never
touch the same file; ``written`` has one chunk per shard for the same reason. A shard's files are
always written
whole (all views at once) after deleting any earlier copy, so zarr's read-modify-write of a
sharded file never reads another attempt's bytes. Only the creator writes metadata and
attributes (``create``, ``finalize``). ``write_shard`` writes the data first and the shard's
``written`` flag last, so a killed writer leaves the shard missing, never half-present. Fill
values never stand for "written": only ``written`` does.

Integrity (format 4): every inner chunk and every file's index end with a ``crc32c`` checksum,
and every chunk of a written shard is on disk, even one equal to the fill value; ``open`` checks
arrays and file presence (:mod:`.integrity`) and every read goes through
:meth:`LogitStore.read`, which turns a chunk that does not decode into one ``StoreDamagedError``
line naming the array and the view (or the file whose index is damaged).
"""

from __future__ import annotations

import errno
import json
import os
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec
from zarr.core.array_spec import ArrayConfigParams

from .blocks import ShardBlock, ViewBlock, pad_shard_block
from .errors import StoreDamagedError, StoreError, StoreVersionError
from .integrity import check_arrays, check_files, chunk_failure, file_key, shard_files
from .location import StoreLocation, unreachable, writing
from .schema import (
    FORMAT_NAME,
    FORMAT_VERSION,
    VERSION_CHANGES,
    ArraySpec,
    FieldSpec,
    ShardLayout,
    StoreSpec,
    TeacherInfo,
    array_specs,
    index_dtype,
    key_digest,
    round_up,
)
from .topk import TopKLogits

# Write failures a user causes and can fix (full disk, quota, read-only or forbidden folder).
_USER_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})

_CREATING = "civt_pipe_creating"
"""Attribute of a store at a URL while :meth:`LogitStore.create` builds it (replaced at the end)."""
_RERUN = "run the same command again: it resumes where this one stopped"

__all__ = [
    "LogitStore",
    "ShardBlock",
    "StoreDamagedError",
    "StoreError",
    "StoreVersionError",
    "ViewBlock",
]

# Chunks equal to the fill value are written too: a missing chunk then always means lost data.
_WRITE_EVERY_CHUNK: ArrayConfigParams = {"write_empty_chunks": True}


def _compressors(dtype: np.dtype[Any] | str) -> list[BloscCodec | Crc32cCodec]:
    # Byte shuffle helps multi-byte numbers; single bytes (bool, uint8, strings) gain nothing.
    # crc32c comes last, so it checks the bytes on disk before blosc decodes them.
    itemsize = np.dtype(dtype).itemsize if dtype != "str" else 1
    shuffle: Literal["shuffle", "noshuffle"] = "shuffle" if itemsize > 1 else "noshuffle"
    return [BloscCodec(cname="zstd", clevel=5, shuffle=shuffle), Crc32cCodec()]


class LogitStore:
    """A logit store on the local file system or at an fsspec URL (:mod:`.location`). Open it
    with :meth:`create` or :meth:`open`."""

    def __init__(self, location: StoreLocation, group: zarr.Group, mode: str) -> None:
        self.location = location
        self.path: Path | str = location.local if location.local is not None else location.url
        """The store's directory, or its URL."""
        self.mode = mode
        self._group = group
        self._attrs: dict[str, Any] = dict(group.attrs)
        self._arrays: dict[str, zarr.Array] = {}
        self._layout = [
            ShardLayout(name=s["name"], count=int(s["count"]), row_offset=int(s["row_offset"]))
            for s in self._attrs["shards"]
        ]
        self._by_name = {s.name: i for i, s in enumerate(self._layout)}
        self._pid = os.getpid()

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(cls, path: str | Path, spec: StoreSpec, *, overwrite: bool = False) -> LogitStore:
        """Create an empty store for ``spec`` at ``path`` (rank 0 only).

        An existing path is an error unless ``overwrite``; even then only a zarr group or an
        empty directory is replaced, never an unrelated directory. ``path`` may be an fsspec
        URL (``s3://bucket/s.zarr``).
        """
        target = StoreLocation(path)
        if target.exists():
            if not overwrite:
                raise StoreError(
                    f"logit store {target} already exists (use --overwrite to replace)"
                )
            if target.is_file():
                raise StoreError(f"refusing to overwrite {target}: it is a file, not a store")
            if not target.is_empty() and not target.is_zarr_group():
                raise StoreError(f"refusing to overwrite {target}: it is not a zarr store")
            target.remove()
        if target.local is not None:
            target.local.parent.mkdir(parents=True, exist_ok=True)
            return cls._create(target, spec)
        # Object storage: made in place (nothing renames atomically), the group first with a
        # marker, so a rerun after a kill or a lost connection recognizes an unfinished
        # creation of ours (creation_interrupted) and starts it again without --overwrite.
        with writing(target.url, _RERUN):
            return cls._create(target, spec, marker={"format": FORMAT_NAME, _CREATING: True})

    @classmethod
    def creation_interrupted(cls, path: str | Path) -> bool:
        """True for a store at a URL whose creation by :meth:`create` never finished (its
        group holds the creation marker and no format version): safe to create again."""
        target = StoreLocation(path)
        if target.is_local or not target.is_zarr_group():
            return False
        try:
            raw = json.loads(target.child("zarr.json").read_bytes())
        except (FileNotFoundError, ValueError):
            return False
        attrs = raw.get("attributes") if isinstance(raw, dict) else None
        return (
            isinstance(attrs, dict)
            and attrs.get(_CREATING) is True
            and attrs.get("format") == FORMAT_NAME
            and "format_version" not in attrs
        )

    @classmethod
    def _create(
        cls, target: StoreLocation, spec: StoreSpec, marker: dict[str, Any] | None = None
    ) -> LogitStore:
        group = zarr.open_group(
            target.zarr_store(read_only=False), mode="w-", zarr_format=3, attributes=marker
        )
        chunk = spec.resolved_chunk_rows
        rows = spec.num_rows
        group.create_group("aug")
        group.create_group("teachers")
        for teacher in spec.teachers:
            group.create_group(f"teachers/{teacher.name}")
        for name, array in spec.arrays().items():
            fill: Any = "" if array.dtype == "str" else np.zeros((), dtype=array.dtype).item()
            group.create_array(
                name,
                shape=array.shape,
                dtype=str if array.dtype == "str" else array.dtype,
                chunks=array.chunks,
                shards=array.shards,
                compressors=_compressors(array.dtype),
                fill_value=fill,
            )
        idx = index_dtype(spec.num_classes).name
        # Attributes last: a store killed during creation is not mistaken for a valid one.
        # put: they replace the creation marker.
        group.attrs.put(
            {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "num_rows": rows,
                "chunk_rows": chunk,
                "num_views": spec.num_views,
                "topk": spec.topk,
                "num_classes": spec.num_classes,
                "index_dtype": idx,
                "shards": [
                    {"name": s.name, "count": s.count, "row_offset": s.row_offset}
                    for s in spec.layout()
                ],
                "teachers": [t.to_dict() for t in spec.teachers],
                "aug_fields": {n: f.to_dict() for n, f in spec.aug_fields.items()},
                "attrs": dict(spec.attrs),
                "complete": False,
            }
        )
        return cls(target, group, "r+")

    @classmethod
    def open(
        cls, path: str | Path, mode: Literal["r", "r+"] = "r", *, check: bool = True
    ) -> LogitStore:
        """Open an existing store; ``StoreError`` if it is missing, not a store, or of another
        format version (newer: upgrade civt-pipe; older: re-dump it).

        With ``check`` (the default), ``StoreDamagedError`` if an array the attributes promise
        is missing or not of the promised shape, dtype, chunks and shards, or a file of a shard
        marked written is absent or shorter than its index (one listing of the store).
        ``check=False`` only for a store this process family already checked (reopening in a
        data-loader worker). ``path`` may be an fsspec URL.
        """
        target = StoreLocation(path)
        if mode not in ("r", "r+"):
            raise ValueError(f"mode must be 'r' or 'r+', got {mode!r}")
        if not target.exists():
            raise StoreError(f"no logit store at {target}")
        if not target.is_zarr_group():
            raise StoreError(f"{target} is not a civt-pipe logit store (no zarr group there)")
        try:
            # Not the consolidated metadata: it would still list an array deleted from disk.
            group = zarr.open_group(
                target.zarr_store(read_only=mode == "r"),
                mode=mode,
                zarr_format=3,
                use_consolidated=False,
            )
        except Exception as err:  # any zarr/JSON failure means "not a store we can read"
            raise StoreError(f"{target} is not a readable zarr v3 group: {err}") from None
        attrs = dict(group.attrs)
        if attrs.get("format") != FORMAT_NAME:
            raise StoreError(f"{target} is a zarr group but not a civt-pipe logit store")
        version = attrs.get("format_version")
        if not isinstance(version, int) or version < 1:
            raise StoreVersionError(
                f"{target} has an unknown logit store format version {version!r}"
            )
        if version > FORMAT_VERSION:
            raise StoreVersionError(
                f"{target} was written with logit store format version {version}; this "
                f"civt-pipe reads up to version {FORMAT_VERSION} (upgrade civt-pipe)"
            )
        if version < FORMAT_VERSION:
            raise StoreVersionError(
                f"{target} was written with the older logit store format version {version}; this "
                f"civt-pipe reads version {FORMAT_VERSION} only ({VERSION_CHANGES[version]}): "
                "re-dump it with civt-pipe dump-logits --overwrite"
            )
        store = cls(target, group, mode)
        if check:
            store.check_whole()
        return store

    def in_this_process(self) -> LogitStore:
        """This store, ready to read in the calling process. A DataLoader worker forked from the
        process that opened a store at a URL holds fsspec clients bound to its parent's event
        loop, which a fork does not copy: the first call in the child opens the store's group
        again (without the whole-store check the parent made). A local store needs nothing."""
        if self._pid != os.getpid() and self.location.local is None:
            again = _reopen(self.path, "r+" if self.mode == "r+" else "r")
            self.location, self._group, self._arrays = again.location, again._group, {}
            self._pid = os.getpid()
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        # Data-loader workers and spawned ranks reopen the store instead of pickling zarr state;
        # the parent checked it when it opened it.
        return (_reopen, (self.path, self.mode))

    def check_whole(self) -> None:
        """``StoreDamagedError`` naming the first missing or misshapen array, or the first absent
        or truncated file of a shard marked written (what :meth:`open` checks)."""
        where = str(self.path)
        specs = self.array_specs
        try:
            check_arrays(where, self._group, specs)
        except (KeyError, ValueError, TypeError) as err:  # unreadable array metadata
            raise StoreDamagedError(f"{where}: array metadata cannot be read ({err})") from None
        written = [s for s, ok in zip(self._layout, self.written_flags(), strict=True) if ok]
        check_files(where, self.location, specs, written, self.chunk_rows)

    # ------------------------------------------------------------------ description
    @property
    def attrs(self) -> dict[str, Any]:
        """All group attributes (a copy, as read at open or last update)."""
        return dict(self._attrs)

    @property
    def shards(self) -> list[ShardLayout]:
        """Shards in row order: name, count, row_offset."""
        return list(self._layout)

    @property
    def num_views(self) -> int:
        """V."""
        return int(self._attrs["num_views"])

    @property
    def topk(self) -> int:
        """k."""
        return int(self._attrs["topk"])

    @property
    def num_classes(self) -> int:
        """C."""
        return int(self._attrs["num_classes"])

    @property
    def chunk_rows(self) -> int:
        """Rows per chunk."""
        return int(self._attrs["chunk_rows"])

    @property
    def num_rows(self) -> int:
        """Rows including padding."""
        return int(self._attrs["num_rows"])

    @property
    def num_samples(self) -> int:
        """Samples over all shards (padding excluded, skipped samples included)."""
        return sum(s.count for s in self._layout)

    @property
    def teachers(self) -> list[TeacherInfo]:
        """Teachers in stored order."""
        return [TeacherInfo.from_dict(t) for t in self._attrs["teachers"]]

    @property
    def teacher_names(self) -> list[str]:
        """Teacher names in stored order."""
        return [str(t["name"]) for t in self._attrs["teachers"]]

    @property
    def aug_fields(self) -> dict[str, FieldSpec]:
        """Augmentation field specs."""
        return {n: FieldSpec.from_dict(f) for n, f in self._attrs["aug_fields"].items()}

    @property
    def user_attrs(self) -> dict[str, Any]:
        """The caller's free attributes (dataset fingerprint, augmentation config, seed...)."""
        return dict(self._attrs.get("attrs", {}))

    @property
    def is_finalized(self) -> bool:
        """True once :meth:`finalize` ran."""
        return bool(self._attrs.get("complete", False))

    @property
    def array_specs(self) -> dict[str, ArraySpec]:
        """Every array the attributes promise: path -> shape, dtype, chunks, shards."""
        return array_specs(
            num_rows=self.num_rows,
            chunk_rows=self.chunk_rows,
            num_views=self.num_views,
            topk=self.topk,
            num_shards=len(self._layout),
            num_classes=self.num_classes,
            aug_fields=self.aug_fields,
            teacher_names=self.teacher_names,
        )

    @property
    def spec(self) -> StoreSpec:
        """The spec the store was created from."""
        return StoreSpec(
            shards=[(s.name, s.count) for s in self._layout],
            num_views=self.num_views,
            topk=self.topk,
            num_classes=self.num_classes,
            teachers=self.teachers,
            aug_fields=self.aug_fields,
            attrs=self.user_attrs,
            chunk_rows=self.chunk_rows,
        )

    def check_compatible(self, spec: StoreSpec) -> None:
        """``StoreError`` naming the first difference between this store and ``spec`` (resume)."""
        mine = self.spec
        checks: list[tuple[str, Any, Any]] = [
            ("shards", mine.shards, spec.shards),
            ("views", mine.num_views, spec.num_views),
            ("top-k", mine.topk, spec.topk),
            ("class count", mine.num_classes, spec.num_classes),
            (
                "teachers",
                [(t.name, t.arch, t.checkpoint_sha256) for t in mine.teachers],
                [(t.name, t.arch, t.checkpoint_sha256) for t in spec.teachers],
            ),
            ("augmentation fields", mine.aug_fields, spec.aug_fields),
            ("chunk rows", mine.resolved_chunk_rows, spec.resolved_chunk_rows),
        ]
        for key in sorted(set(mine.attrs) | set(spec.attrs)):
            checks.append((f"attribute {key!r}", mine.attrs.get(key), spec.attrs.get(key)))
        for what, stored, wanted in checks:
            if stored != wanted:
                raise StoreError(
                    f"logit store {self.path} was made with different {what} "
                    f"({_short(stored)} vs {_short(wanted)} now); use --overwrite or another --out"
                )

    def shard(self, name: str) -> ShardLayout:
        """The layout of shard ``name``; ``StoreError`` if the store does not list it."""
        if name not in self._by_name:
            raise StoreError(f"shard {name!r} is not in logit store {self.path}")
        return self._layout[self._by_name[name]]

    def array(self, name: str) -> zarr.Array:
        """The zarr array at ``name`` (e.g. ``"teachers/cnn/logprobs"``), cached.

        Writes through it store every chunk, even one equal to the fill value. Read with
        :meth:`read`, which names a damaged chunk instead of raising the codec's error.
        """
        if name not in self._arrays:
            try:
                arr = self._group[name]
            except KeyError:
                raise StoreDamagedError(f"{self.path}: array {name} is missing") from None
            if not isinstance(arr, zarr.Array):
                raise StoreError(f"logit store {self.path}: {name} is not an array")
            self._arrays[name] = arr.with_config(_WRITE_EVERY_CHUNK)
        return self._arrays[name]

    def read(self, name: str, selection: Any = ...) -> np.ndarray:
        """``selection`` of array ``name`` as numpy; the one place the store decodes chunks.

        A chunk that fails its checksum or does not decode is a ``StoreDamagedError`` naming
        the array and the view and chunk (or the file, when its index is damaged); at a URL, a
        connection that fails is ``cannot reach URL`` (the data may be whole).
        """
        arr = self.array(name)
        try:
            return np.asarray(arr[selection])
        except Exception as err:  # codec errors come as ValueError, RuntimeError, blosc's own...
            lost = None if self.location.is_local else unreachable(self.location.url, err)
            if lost is not None:
                raise lost from None
            raise chunk_failure(str(self.path), self.location, name, arr, selection, err) from None

    def _keys(self, rows: slice) -> list[str]:
        return [str(k) for k in self.read("keys", rows).tolist()]

    # ------------------------------------------------------------------ completeness
    def written_flags(self) -> np.ndarray:
        """``[num_shards]`` bool: which shards are completely written."""
        return self.read("written").astype(bool)

    def missing_shards(self) -> list[str]:
        """Names of shards whose ``written`` flag is not set, in store order."""
        flags = self.written_flags()
        return [s.name for s, ok in zip(self._layout, flags, strict=True) if not ok]

    def is_complete(self) -> bool:
        """True when every shard is written."""
        return bool(self.written_flags().all())

    def bytes_on_disk(self) -> int:
        """Bytes of the files under the store."""
        return sum(self.location.files().values())

    # ------------------------------------------------------------------ writing
    def write_shard(self, name: str, block: ShardBlock, *, replace: bool = False) -> None:
        """Write one shard's block (all views, teachers, aug fields), then set its flag.

        Deletes the shard's files, then writes them whole (the block padded to the shard's chunk
        span, all views at once), so nothing of an earlier attempt is merged in, no file is
        shared with another shard, and a rewrite produces the same bytes. Raises ``StoreError``
        if the shard is already written (unless ``replace``) or the store is finalized.
        """
        if self.mode != "r+":
            raise StoreError(f"logit store {self.path} is open read-only")
        if self.is_finalized:
            raise StoreError(f"logit store {self.path} is finalized; it takes no more writes")
        # At a URL the connection may go at any moment: one line, and the shard's flag is
        # still False, so the rerun writes it anew.
        with nullcontext() if self.location.is_local else writing(self.location.url, _RERUN):
            self._write_shard(name, block, replace=replace)

    def _write_shard(self, name: str, block: ShardBlock, *, replace: bool) -> None:
        layout = self.shard(name)
        flag_index = self._by_name[name]
        written = self.array("written")
        if bool(self.read("written", flag_index)):
            if not replace:
                raise StoreError(f"shard {name!r} is already written in {self.path}")
            # Clear first: a rewrite killed half-way must leave the shard missing.
            written[flag_index] = False
        data = self._padded_block(layout, block)
        # Nothing non-finite is ever stored: a NaN logit would train a student on garbage.
        for array_name in data:
            if data[array_name].dtype.kind == "f" and not np.isfinite(data[array_name]).all():
                raise StoreError(
                    f"{array_name} of shard {name!r} holds NaN or infinite values; nothing of "
                    f"the shard was written to {self.path}"
                )
        rows = slice(layout.row_offset, layout.row_offset + round_up(layout.count, self.chunk_rows))
        try:
            self._delete_files(layout)
            for array_name, values in data.items():
                self.array(array_name)[rows] = values
            written[flag_index] = True
        except OSError as err:
            # The shard's flag is still False, so the next run writes the shard anew.
            if err.errno not in _USER_WRITE_ERRNOS:
                raise
            raise StoreError(
                f"cannot write shard {name!r} to {self.path}: {os.strerror(err.errno or 0).lower()}"
                "; fix that, then run the same command again (the shard is written anew)"
            ) from err

    def _delete_files(self, layout: ShardLayout) -> None:
        # zarr writes a sharded file by reading it, merging and rewriting it. A shard is always
        # written whole, so nothing of an earlier attempt is kept, but a leftover file that no
        # longer decodes would make the rewrite fail: delete the shard's files first, so the
        # read finds nothing (``written`` is the flag, cleared above, not data).
        for array_name, spec in self.array_specs.items():
            if array_name != "written":
                for coords in shard_files(spec, layout, self.chunk_rows):
                    self.location.child(file_key(array_name, coords)).delete_file()

    def _padded_block(self, layout: ShardLayout, block: ShardBlock) -> dict[str, np.ndarray]:
        return pad_shard_block(
            block,
            name=layout.name,
            count=layout.count,
            span=round_up(layout.count, self.chunk_rows),
            num_views=self.num_views,
            topk=self.topk,
            index_dtype=str(self._attrs["index_dtype"]),
            aug_fields=self.aug_fields,
            teacher_names=self.teacher_names,
        )

    # ------------------------------------------------------------------ reading
    def read_view(
        self,
        name: str,
        view: int,
        teachers: Sequence[str] | None = None,
        *,
        topk: int | None = None,
    ) -> ViewBlock:
        """One view of one shard: one inner chunk read per array (when the shard fits one
        chunk); a per-view array's read is two ranged requests, its file's index then the chunk.
        ``teachers``: read only these teachers' arrays (None: every teacher). ``topk``: keep the
        first ``topk`` entries of every row (:meth:`TopKLogits.first`; None: all the store's k)."""
        if not 0 <= view < self.num_views:
            raise StoreError(f"view {view} is out of range: {self.path} has {self.num_views} views")
        layout = self.shard(name)
        rows = slice(layout.row_offset, layout.row_offset + layout.count)

        def get(array_name: str) -> np.ndarray:
            return self.read(array_name, (rows, view))

        per_teacher: dict[str, TopKLogits] = {}
        for t in self.teacher_names if teachers is None else teachers:
            stored = TopKLogits(
                logprobs=torch.from_numpy(get(f"teachers/{t}/logprobs")),
                indices=torch.from_numpy(get(f"teachers/{t}/indices")),
                lse=torch.from_numpy(get(f"teachers/{t}/lse")),
            )
            per_teacher[t] = stored if topk is None else stored.first(topk)
        return ViewBlock(
            view=view,
            keys=self._keys(rows),
            labels=self.read("labels", rows),
            view_labels=get("view_labels"),
            digests=get("digests"),
            aug={f: get(f"aug/{f}") for f in self._attrs["aug_fields"]},
            teachers=per_teacher,
            valid=self.read("valid", rows).astype(bool),
        )

    def read_shard(self, name: str) -> ShardBlock:
        """All views of one shard (one whole-file read per per-view array)."""
        layout = self.shard(name)
        rows = slice(layout.row_offset, layout.row_offset + layout.count)

        def get(array_name: str) -> np.ndarray:
            return self.read(array_name, rows)

        teachers = {
            t: TopKLogits(
                logprobs=torch.from_numpy(get(f"teachers/{t}/logprobs")),
                indices=torch.from_numpy(get(f"teachers/{t}/indices")),
                lse=torch.from_numpy(get(f"teachers/{t}/lse")),
            )
            for t in self.teacher_names
        }
        return ShardBlock(
            keys=self._keys(rows),
            labels=get("labels"),
            view_labels=get("view_labels"),
            digests=get("digests"),
            aug={f: get(f"aug/{f}") for f in self._attrs["aug_fields"]},
            teachers=teachers,
            valid=get("valid").astype(bool),
        )

    # ------------------------------------------------------------------ finishing
    def finalize(self, extra_attrs: dict[str, Any] | None = None) -> None:
        """Record final attributes and consolidate metadata (rank 0, after the last write).

        Adds per-shard ``key_digest`` (:func:`~.schema.key_digest` of the shard's keys), per
        teacher ``top1`` on the stored views, the skipped keys, ``complete: true``, and merges
        ``extra_attrs`` into the free attributes. ``StoreError`` if a shard is missing.
        """
        if self.mode != "r+":
            raise StoreError(f"logit store {self.path} is open read-only")
        # At a URL a lost connection is one line; the rerun finds every shard written and
        # finalizes again.
        with nullcontext() if self.location.is_local else writing(self.location.url, _RERUN):
            self._finalize(extra_attrs)

    def _finalize(self, extra_attrs: dict[str, Any] | None) -> None:
        missing = self.missing_shards()
        if missing:
            shown = ", ".join(missing[:5]) + (
                f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            )
            raise StoreError(f"cannot finalize {self.path}: shards not written: {shown}")
        names = self.teacher_names
        hits = dict.fromkeys(names, 0)
        counted = 0
        skipped: list[str] = []
        shards_attr = []
        for layout in self._layout:
            rows = slice(layout.row_offset, layout.row_offset + layout.count)
            keys = self._keys(rows)
            valid = self.read("valid", rows).astype(bool)
            view_labels = self.read("view_labels", rows)[valid]
            for t in names:
                top1 = self.read(f"teachers/{t}/indices", (rows, slice(None), 0))[valid]
                hits[t] += int((top1 == view_labels).sum())
            counted += int(view_labels.size)
            skipped.extend(k for k, ok in zip(keys, valid, strict=True) if not ok)
            shards_attr.append(
                {
                    "name": layout.name,
                    "count": layout.count,
                    "row_offset": layout.row_offset,
                    "key_digest": key_digest(keys),
                }
            )
        teachers_attr = []
        for t in self._attrs["teachers"]:
            entry = dict(t)
            entry["top1"] = hits[t["name"]] / counted if counted else 0.0
            teachers_attr.append(entry)
        user = dict(self._attrs.get("attrs", {}))
        user.update(extra_attrs or {})
        update: dict[str, Any] = {
            "shards": shards_attr,
            "teachers": teachers_attr,
            "attrs": user,
            "num_skipped": len(skipped),
            "skipped_keys": skipped,
            "complete": True,
        }
        self._group.attrs.update(update)
        self._attrs.update(update)
        with warnings.catch_warnings():
            # zarr warns that consolidated metadata is not in the v3 spec yet; readers that
            # ignore it still find every array's own zarr.json.
            warnings.simplefilter("ignore")
            zarr.consolidate_metadata(self.location.zarr_store(read_only=False), zarr_format=3)


def _reopen(path: Path | str, mode: Literal["r", "r+"]) -> LogitStore:
    """Unpickling: open again without repeating the whole-store check."""
    return LogitStore.open(path, mode, check=False)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
