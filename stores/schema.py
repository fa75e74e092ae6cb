"""What a logit store holds: format constants and the typed spec a caller creates a store from.

The store knows nothing about models or augmentation semantics. A caller (``dump-logits``)
describes the shards, the number of views ``V``, ``k``, the class count, its teachers and the
per-(row, view) augmentation fields; the store lays out rows and arrays from that.
See ``docs/store-format.md`` for the on-disk format.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import StoreError

FORMAT_NAME = "civt-pipe-logit-store"
"""Value of the group attribute ``format``; anything else is not one of our stores."""

FORMAT_VERSION = 4
"""Bumped on any change a reader of the previous version would misread.

Version 4 stores each (shard, per-view array) as one zarr v3 *sharded* file holding one inner
chunk per view (``sharding_indexed``; the index and every inner chunk checksummed), instead of
one file per (shard, view, array). Version 3 ends every array's codec chain with a ``crc32c``
checksum and writes every chunk of a written shard (even one equal to the fill value), so damage
and loss are detected instead of read as data. Version 2 stored top-k log-probabilities
(``teachers/<name>/logprobs``); version 1 stored raw logits in float16 (``values``). Older
versions are refused with a request to re-dump."""

VERSION_CHANGES = {
    1: "it stores raw float16 logits instead of top-k log-probabilities",
    2: "its chunks carry no checksums, so damaged or missing chunks read as data",
    3: "it keeps one file per (shard, view, array) where version 4 keeps one sharded file "
    "per (shard, array)",
}
"""Why a store of an older format version cannot be read (the refusal names it)."""

DEFAULT_CHUNK_MULTIPLE = 64
"""Default ``chunk_rows`` is the largest shard count rounded up to a multiple of this."""

INT16_MAX_CLASSES = 32767
"""Class ids are stored as int16 up to this class count, int32 above it."""

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def index_dtype(num_classes: int) -> np.dtype[Any]:
    """The dtype of stored class ids: int16, or int32 when ``num_classes`` > 32767."""
    return np.dtype(np.int16) if num_classes <= INT16_MAX_CLASSES else np.dtype(np.int32)


def key_digest(keys: Iterable[str]) -> str:
    """sha256 (hex) of a shard's keys joined by ``"\\n"``, in shard order.

    The one formula for a shard's identity: the shard index records it, the reader checks a tar
    against it, and the store's ``finalize`` writes it per shard, so all three must agree.
    """
    return hashlib.sha256("\n".join(keys).encode("utf-8")).hexdigest()


def round_up(value: int, multiple: int) -> int:
    """``value`` rounded up to a multiple of ``multiple`` (at least one multiple)."""
    return max(multiple, -(-value // multiple) * multiple)


def _check_name(kind: str, name: str) -> None:
    # Names become zarr path components, so they must be plain file-name-safe words.
    if not _NAME_RE.match(name):
        raise StoreError(
            f"{kind} name {name!r} must use only letters, digits, '_', '.' and '-' "
            "and not start with '.' or '-'"
        )


@dataclass(frozen=True)
class FieldSpec:
    """One augmentation field: the trailing shape per (row, view) and its numpy dtype name."""

    shape: tuple[int, ...]
    """Trailing shape per (row, view), e.g. ``(4,)`` for a box, ``()`` for a scalar."""
    dtype: str
    """A numpy dtype name such as ``"int32"``, ``"uint8"``, ``"float32"``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if any(s < 1 for s in self.shape):
            raise StoreError(f"augmentation field shape {self.shape} has a non-positive size")
        try:
            dt = np.dtype(self.dtype)
        except TypeError as err:
            raise StoreError(
                f"augmentation field dtype {self.dtype!r} is not a numpy dtype"
            ) from err
        if dt.kind not in "biuf":
            raise StoreError(
                f"augmentation field dtype {self.dtype!r} must be a bool, integer or float type"
            )
        object.__setattr__(self, "dtype", dt.name)

    def to_dict(self) -> dict[str, Any]:
        """JSON form stored in the group attributes."""
        return {"shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FieldSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(shape=tuple(data["shape"]), dtype=str(data["dtype"]))


@dataclass(frozen=True)
class TeacherInfo:
    """A teacher whose top-k logits the store keeps."""

    name: str
    """Short name, used as the array group ``teachers/<name>`` (e.g. ``"cnn"``, ``"inn"``)."""
    arch: str
    """Architecture name from the model registry (e.g. ``"resnet18"``, ``"rednet26"``)."""
    checkpoint_sha256: str
    """sha256 of the checkpoint file the logits came from (hex)."""
    num_classes: int
    """Output classes of the teacher; must equal the store's class count."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Free JSON metadata (normalization, accuracy measured elsewhere...)."""
    pretrained_cfg: dict[str, Any] | None = None
    """A model-zoo teacher's pretrained configuration (timm's ``pretrained_cfg`` fields: mean,
    std, input size, interpolation, crop); None (and not written) for our own teachers."""

    def __post_init__(self) -> None:
        _check_name("teacher", self.name)
        if not self.arch:
            raise StoreError(f"teacher {self.name!r} has an empty arch")
        if self.num_classes < 1:
            raise StoreError(f"teacher {self.name!r} has {self.num_classes} classes")

    def to_dict(self) -> dict[str, Any]:
        """JSON form stored in the group attributes."""
        out = {
            "name": self.name,
            "arch": self.arch,
            "checkpoint_sha256": self.checkpoint_sha256,
            "num_classes": self.num_classes,
            "meta": dict(self.meta),
        }
        if self.pretrained_cfg is not None:  # zoo teachers only: our stores keep their bytes
            out["pretrained_cfg"] = dict(self.pretrained_cfg)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TeacherInfo:
        """Inverse of :meth:`to_dict`."""
        return cls(
            name=str(data["name"]),
            arch=str(data["arch"]),
            checkpoint_sha256=str(data["checkpoint_sha256"]),
            num_classes=int(data["num_classes"]),
            meta=dict(data.get("meta", {})),
            pretrained_cfg=(
                dict(data["pretrained_cfg"]) if data.get("pretrained_cfg") is not None else None
            ),
        )


@dataclass(frozen=True)
class ArraySpec:
    """What one array of a store must be: its shape, dtype, chunk shape and shard shape."""

    shape: tuple[int, ...]
    dtype: str
    """A numpy dtype name, or ``"str"`` for variable-length UTF-8 strings."""
    chunks: tuple[int, ...]
    """The unit of a read: the inner chunk when the array is sharded."""
    shards: tuple[int, ...] | None = None
    """The unit of a file (zarr's sharding codec), or None when every chunk is its own file."""

    @property
    def file_shape(self) -> tuple[int, ...]:
        """The part of the array one file holds: the shard, or the chunk when not sharded."""
        return self.shards if self.shards is not None else self.chunks


def array_specs(
    *,
    num_rows: int,
    chunk_rows: int,
    num_views: int,
    topk: int,
    num_shards: int,
    num_classes: int,
    aug_fields: dict[str, FieldSpec],
    teacher_names: Iterable[str],
) -> dict[str, ArraySpec]:
    """Every array a store with these attributes holds, by path (the one list that ``create``
    makes, ``open`` checks and ``verify`` checks).

    Per-view arrays are sharded: one file per ``chunk_rows`` rows holding every view, one inner
    chunk per view, so a file belongs to one shard (one writer) and a read is one view.
    """
    rows, chunk, views, k = num_rows, chunk_rows, num_views, topk

    def per_view(dtype: str, *trailing: int) -> ArraySpec:
        return ArraySpec(
            (rows, views, *trailing), dtype, (chunk, 1, *trailing), (chunk, views, *trailing)
        )

    specs = {
        "keys": ArraySpec((rows,), "str", (chunk,)),
        "valid": ArraySpec((rows,), "bool", (chunk,)),
        "labels": ArraySpec((rows,), "int32", (chunk,)),
        "view_labels": per_view("int32"),
        "digests": per_view("uint64"),
        "written": ArraySpec((num_shards,), "bool", (1,)),
    }
    for name, fspec in aug_fields.items():
        specs[f"aug/{name}"] = per_view(fspec.dtype, *fspec.shape)
    idx = index_dtype(num_classes).name
    for t in teacher_names:
        specs[f"teachers/{t}/logprobs"] = per_view("float16", k)
        specs[f"teachers/{t}/indices"] = per_view(idx, k)
        specs[f"teachers/{t}/lse"] = per_view("float32")
    return specs


@dataclass(frozen=True)
class ShardLayout:
    """Where one shard's rows live: ``rows [row_offset, row_offset + count)``."""

    name: str
    count: int
    row_offset: int


@dataclass(frozen=True)
class StoreSpec:
    """Everything needed to create a store. Validated on construction."""

    shards: list[tuple[str, int]]
    """Shard basenames and sample counts, in dataset order."""
    num_views: int
    """Augmented views per sample (V)."""
    topk: int
    """Logits kept per (row, view, teacher) (k)."""
    num_classes: int
    """Class count (C)."""
    teachers: list[TeacherInfo]
    """Teachers, in the order they are reported."""
    aug_fields: dict[str, FieldSpec] = field(default_factory=dict)
    """Augmentation parameter fields stored per (row, view)."""
    attrs: dict[str, Any] = field(default_factory=dict)
    """Free JSON attributes (dataset fingerprint, augmentation config, seed...)."""
    chunk_rows: int | None = None
    """Rows per chunk; default: the largest shard count rounded up to a multiple of 64."""

    def __post_init__(self) -> None:
        shards = [(str(n), int(c)) for n, c in self.shards]
        object.__setattr__(self, "shards", shards)
        if not shards:
            raise StoreError("a logit store needs at least one shard")
        names = [n for n, _ in shards]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise StoreError(f"shard {dup!r} is listed twice")
        for name, count in shards:
            if count < 1:
                raise StoreError(f"shard {name!r} has no samples")
        if self.num_views < 1:
            raise StoreError(f"the number of views must be at least 1, got {self.num_views}")
        if self.num_classes < 2:
            raise StoreError(f"the class count must be at least 2, got {self.num_classes}")
        if not 1 <= self.topk <= self.num_classes:
            raise StoreError(
                f"top-k {self.topk} must be between 1 and the class count {self.num_classes}"
            )
        if not self.teachers:
            raise StoreError("a logit store needs at least one teacher")
        tnames = [t.name for t in self.teachers]
        if len(set(tnames)) != len(tnames):
            raise StoreError(f"teacher names must be unique, got {tnames}")
        for t in self.teachers:
            if t.num_classes != self.num_classes:
                raise StoreError(
                    f"teacher {t.name!r} has {t.num_classes} classes but the data has "
                    f"{self.num_classes}"
                )
        for fname in self.aug_fields:
            _check_name("augmentation field", fname)
        if self.chunk_rows is not None and self.chunk_rows < 1:
            raise StoreError(f"chunk_rows must be at least 1, got {self.chunk_rows}")

    @property
    def resolved_chunk_rows(self) -> int:
        """``chunk_rows``, or the default that puts every shard in one chunk."""
        if self.chunk_rows is not None:
            return self.chunk_rows
        return round_up(max(c for _, c in self.shards), DEFAULT_CHUNK_MULTIPLE)

    def layout(self) -> list[ShardLayout]:
        """Row ranges: shard after shard, each starting on a chunk boundary (padded)."""
        chunk = self.resolved_chunk_rows
        out: list[ShardLayout] = []
        offset = 0
        for name, count in self.shards:
            out.append(ShardLayout(name=name, count=count, row_offset=offset))
            offset += round_up(count, chunk)
        return out

    @property
    def num_rows(self) -> int:
        """Total rows including padding (the length of every array's first axis)."""
        chunk = self.resolved_chunk_rows
        return sum(round_up(c, chunk) for _, c in self.shards)

    def arrays(self) -> dict[str, ArraySpec]:
        """Every array of a store made from this spec (:func:`array_specs`)."""
        return array_specs(
            num_rows=self.num_rows,
            chunk_rows=self.resolved_chunk_rows,
            num_views=self.num_views,
            topk=self.topk,
            num_shards=len(self.shards),
            num_classes=self.num_classes,
            aug_fields=self.aug_fields,
            teacher_names=[t.name for t in self.teachers],
        )
