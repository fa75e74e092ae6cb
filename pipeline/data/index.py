"""The shard index: what a directory of WebDataset tars holds, written beside them as JSON.

``make-shards`` writes ``index.json`` last, after every tar is complete, so a directory with an
index is a finished shard set. Readers use it to know counts, class names, channels and the
normalization statistics without opening a tar; shards that come without one (made by other
tools) get an equivalent index by scanning the tars once (see :mod:`.shard_set`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

# Re-exported: the shard index and the logit store share one key-digest formula (the store's).
from ...stores.schema import key_digest as key_digest
from ..runtime.atomic import atomic_write_json
from ..runtime.errors import UserError

INDEX_FILENAME = "index.json"
"""Name of the index file beside the tars."""

INCOMPLETE_MARKER = ".make-shards-incomplete"
"""Present while ``make-shards`` writes a directory; removed after ``index.json`` is in place."""

INDEX_VERSION = 1

# Used when a shard set carries no statistics of its own (foreign shards): the usual ImageNet
# values, and their channel average for grayscale data.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_MEAN = (0.449,)
GRAY_STD = (0.226,)


def default_stats(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Fallback per-channel (mean, std) in [0, 1] for data whose statistics are unknown."""
    return (GRAY_MEAN, GRAY_STD) if channels == 1 else (IMAGENET_MEAN, IMAGENET_STD)


@dataclass(frozen=True, slots=True)
class ShardInfo:
    """One tar of a shard set."""

    name: str
    """Basename of the tar, e.g. ``train-000000.tar``."""
    num_samples: int
    """Samples (keys) in the tar."""
    key_digest: str
    """sha256 of the tar's keys joined by newlines, in tar order."""
    tar_bytes: int | None = None
    """Size of the tar as make-shards wrote it (None: an index of foreign tars, or one written
    before the field existed). A tar of exactly this size is trusted to be whole and to hold
    the listed keys without walking its headers (``shard_set.check_shards_complete``); the
    readers still check every key as they read it."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "num_samples": self.num_samples,
            "key_digest": self.key_digest,
        }
        if self.tar_bytes is not None:
            out["tar_bytes"] = self.tar_bytes
        return out

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> ShardInfo:
        size = obj.get("tar_bytes")
        return cls(
            name=str(obj["name"]),
            num_samples=int(obj["num_samples"]),
            key_digest=str(obj["key_digest"]),
            tar_bytes=int(size) if size is not None else None,
        )


@dataclass(frozen=True, slots=True)
class ShardIndex:
    """Everything a reader needs to know about a set of shards before opening one."""

    shards: tuple[ShardInfo, ...]
    class_names: tuple[str, ...]
    source: str
    """Where the shards came from (``digits``, ``idx:/data/mnist``, ``scan`` for foreign tars)."""
    split: str
    channels: int
    """1 (grayscale, PNG mode L) or 3 (RGB)."""
    image_size: tuple[int, int] | None
    """(height, width) when every image has the same size, else None."""
    mean: tuple[float, ...]
    """Per-channel pixel mean in [0, 1]."""
    std: tuple[float, ...]
    """Per-channel pixel standard deviation in [0, 1]."""
    format: str
    """Image extension inside the tars (``png``, ``jpg``...)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Source-specific facts (e.g. the digits split seed); kept verbatim."""

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError("mean and std need one value per channel")
        if not self.class_names:
            raise ValueError("a shard index needs at least one class name")
        names = [s.name for s in self.shards]
        if len(set(names)) != len(names):
            raise ValueError("shard names in an index must be unique")

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.shards)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def shard(self, name: str) -> ShardInfo:
        """The entry for shard ``name`` (basename); UserError if the index does not list it."""
        for info in self.shards:
            if info.name == name:
                return info
        raise UserError(f"shard {name} is not listed in the shard index")

    def subset(self, names: Sequence[str]) -> ShardIndex:
        """The same index restricted to ``names``, in that order."""
        by_name = {s.name: s for s in self.shards}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise UserError(f"shard {missing[0]} is not listed in the shard index")
        return replace(self, shards=tuple(by_name[n] for n in names), extra=dict(self.extra))

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": INDEX_VERSION,
            "source": self.source,
            "split": self.split,
            "format": self.format,
            "channels": self.channels,
            "image_size": list(self.image_size) if self.image_size is not None else None,
            "mean": list(self.mean),
            "std": list(self.std),
            "class_names": list(self.class_names),
            "num_classes": self.num_classes,
            "num_samples": self.num_samples,
            "shards": [s.to_dict() for s in self.shards],
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> ShardIndex:
        size = obj.get("image_size")
        return cls(
            shards=tuple(ShardInfo.from_dict(s) for s in obj["shards"]),
            class_names=tuple(str(c) for c in obj["class_names"]),
            source=str(obj["source"]),
            split=str(obj["split"]),
            channels=int(obj["channels"]),
            image_size=(int(size[0]), int(size[1])) if size is not None else None,
            mean=tuple(float(m) for m in obj["mean"]),
            std=tuple(float(s) for s in obj["std"]),
            format=str(obj["format"]),
            extra=dict(obj.get("extra") or {}),
        )

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Atomically write ``directory/index.json``; returns its path."""
        path = Path(directory) / INDEX_FILENAME
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> ShardIndex:
        """Read ``directory/index.json``; UserError when it is missing or malformed."""
        path = Path(directory) / INDEX_FILENAME
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise UserError(f"{path} does not exist") from None
        except OSError as err:
            raise UserError(f"cannot read shard index {path}: {err}") from None
        return cls.from_json(data, str(path))

    @classmethod
    def from_json(cls, data: bytes, where: str) -> ShardIndex:
        """Parse the bytes of an ``index.json`` read from ``where`` (named in the UserError
        when they are not a valid index)."""
        try:
            obj = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UserError(f"cannot read shard index {where}: {err}") from None
        try:
            return cls.from_dict(obj)
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise UserError(f"shard index {where} is malformed: {err!r}") from None
