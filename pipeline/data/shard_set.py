"""A set of shards and its index, resolved from a directory or a brace pattern.

``resolve_shards("data/train")`` uses ``data/train/index.json``;
``resolve_shards("data/train/train-{000000..000003}.tar")`` uses the index of the folder the
tars sit in, restricted to the named tars. Tars without an index (made by other tools, e.g. an
ImageNet conversion) are scanned once — member names and ``.cls`` labels, no image decoding
except the first — to build an equivalent index with class names ``"0"`` .. ``"C-1"``.

Shards at a URL or behind a ``pipe:`` command (:mod:`.remote`) are named the same two ways
(a folder URL, or a brace pattern of tars) and must come with their ``index.json``.
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...stores.location import local_path
from ..runtime.errors import UserError
from .imageio import IMAGE_SUFFIXES, TarDamage, tar_looks_complete, tar_member_names, tar_members
from .index import (
    INCOMPLETE_MARKER,
    INDEX_FILENAME,
    ShardIndex,
    ShardInfo,
    default_stats,
    key_digest,
)
from .remote import ShardPath, exists, index_source, is_pipe, is_remote, read_bytes, shard_name

# Foreign shards say nothing about channels: the first images decide (one colour image makes the
# set RGB; ImageNet, for one, has a few grayscale JPEGs among colour ones).
_CHANNEL_PROBES = 16

# webdataset's rule: the key is everything up to the first dot of the file's basename.
_KEY_AND_SUFFIX = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


@dataclass(frozen=True, slots=True)
class ShardSet:
    """Tars in reading order, with the index entry of each."""

    paths: tuple[ShardPath, ...]
    """Local tars as paths; remote ones as their URL or ``pipe:`` command."""
    index: ShardIndex

    def __post_init__(self) -> None:
        names = [shard_name(p) for p in self.paths]
        if names != [s.name for s in self.index.shards]:
            raise ValueError("ShardSet paths and index shards must name the same tars in order")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def names(self) -> list[str]:
        """Shard basenames, in order."""
        return [shard_name(p) for p in self.paths]

    @property
    def num_samples(self) -> int:
        return self.index.num_samples

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.index.class_names

    @property
    def num_classes(self) -> int:
        return self.index.num_classes

    @property
    def channels(self) -> int:
        return self.index.channels

    def path(self, name: str) -> ShardPath:
        """The tar called ``name``; UserError if it is not part of the set."""
        for p in self.paths:
            if shard_name(p) == name:
                return p
        raise UserError(f"shard {name} is not part of this shard set")

    def fingerprint(self) -> str:
        """sha256 (hex) over every shard's name, sample count and key digest, in order."""
        digest = hashlib.sha256()
        for info in self.index.shards:
            digest.update(f"{info.name}\t{info.num_samples}\t{info.key_digest}\n".encode())
        return digest.hexdigest()


def _check_not_interrupted(directory: Path) -> None:
    if (directory / INCOMPLETE_MARKER).exists() and not (directory / INDEX_FILENAME).exists():
        raise UserError(
            f"{directory} was left by an interrupted make-shards; run the same make-shards "
            "command again to finish it"
        )


def _from_directory(directory: Path) -> ShardSet:
    _check_not_interrupted(directory)
    if (directory / INDEX_FILENAME).is_file():
        index = ShardIndex.load(directory)
        if not index.shards:
            raise UserError(f"shard index {directory / INDEX_FILENAME} lists no shards")
        paths = tuple(directory / s.name for s in index.shards)
        for path in paths:
            if not path.is_file():
                raise UserError(f"shard {path} is listed in {INDEX_FILENAME} but missing")
        return ShardSet(paths, index)
    tars = sorted(p for p in directory.glob("*.tar") if p.is_file())
    if not tars:
        raise UserError(f"shard directory {directory} holds no .tar files")
    return ShardSet(tuple(tars), scan_shards(tars))


def _from_pattern(spec: str) -> ShardSet:
    from braceexpand import braceexpand

    paths = [Path(p).expanduser() for p in braceexpand(spec)]
    if not paths:
        raise UserError(f"shard pattern {spec} names no files")
    if len({p.resolve() for p in paths}) != len(paths):
        raise UserError(f"shard pattern {spec} names a tar more than once")
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        raise UserError(f"shard pattern {spec} names two tars with the same basename")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise UserError(
            f"shard {missing[0]} does not exist "
            f"({len(missing)} of the {len(paths)} tars named by {spec} are missing)"
        )
    parents = {p.parent.resolve() for p in paths}
    if len(parents) == 1:
        parent = paths[0].parent
        _check_not_interrupted(parent)
        if (parent / INDEX_FILENAME).is_file():
            index = ShardIndex.load(parent)
            listed = {s.name for s in index.shards}
            if all(n in listed for n in names):
                return ShardSet(tuple(paths), index.subset(names))
    return ShardSet(tuple(paths), scan_shards(paths))


_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def _remote_index(source: str) -> ShardIndex:
    try:
        data = read_bytes(source)
    except FileNotFoundError:
        raise UserError(
            f"no shard index at {source}: shards at a URL need the {INDEX_FILENAME} that "
            "make-shards writes beside them (copy it along with the tars)"
        ) from None
    return ShardIndex.from_json(data, source)


def _from_remote(spec: str) -> ShardSet:
    """A folder URL (its ``index.json`` lists the tars), or a brace pattern of tar URLs or
    ``pipe:`` commands (the index beside the first names them)."""
    from braceexpand import braceexpand

    expanded = list(braceexpand(spec))
    if len(expanded) == 1 and not is_pipe(spec) and not spec.endswith(_TAR_SUFFIXES):
        folder = spec.rstrip("/")
        index = _remote_index(f"{folder}/{INDEX_FILENAME}")
        if not index.shards:
            raise UserError(f"shard index {folder}/{INDEX_FILENAME} lists no shards")
        paths = [f"{folder}/{s.name}" for s in index.shards]
    else:
        paths = expanded
        names = [shard_name(p) for p in paths]
        if len(set(paths)) != len(paths) or len(set(names)) != len(names):
            raise UserError(f"shard pattern {spec} names a tar (or a basename) more than once")
        if not is_pipe(spec) and len({p.rsplit("/", 1)[0] for p in paths}) != 1:
            raise UserError(f"shard pattern {spec} spans several folders; name one folder's tars")
        index = _remote_index(index_source(paths[0]))
        unlisted = [n for n in names if n not in {s.name for s in index.shards}]
        if unlisted:
            raise UserError(f"shard {unlisted[0]} is not listed in the index beside it")
        index = index.subset(names)
    for path in paths:
        if not exists(path):
            raise UserError(f"shard {path} does not exist (the index beside it lists it)")
    return ShardSet(tuple(paths), index)


def resolve_shards(spec: str | os.PathLike[str]) -> ShardSet:
    """The shard set named by a directory, a brace pattern or a single tar — local, at an fsspec
    URL or behind ``pipe:`` commands (:mod:`.remote`).

    Raises :class:`UserError` when the spec names nothing, a tar is missing, the directory is
    empty or was left by an interrupted ``make-shards``.
    """
    text = check_shard_spec(spec)
    if is_remote(text):
        return _from_remote(text)
    path = Path(text).expanduser()
    if path.is_dir():
        return _from_directory(path)
    return _from_pattern(text)


def check_shard_spec(spec: str | os.PathLike[str]) -> str:
    """Before any work (torch-free): a local shard spec names an existing directory or file, or
    is a brace pattern; returns the spec as text (``file://`` URLs as local paths). Remote
    specs are left to :func:`resolve_shards`, which reads their index."""
    text = os.fspath(spec)
    if not text:
        raise UserError("the shard spec is empty")
    if is_remote(text):
        return text
    if text.lower().startswith("file://"):
        text = str(local_path(text))  # file:///data/train is /data/train
    path = Path(text).expanduser()
    if not (path.is_dir() or "{" in text or path.is_file()):
        raise UserError(f"shard spec {text}: no such directory or file")
    return text


def sample_keys(member_names: Sequence[str], shard: ShardPath) -> list[str]:
    """The sample keys of a tar's members, webdataset's way: consecutive members sharing a key
    (the name up to the first dot of its basename) are one sample; ``__*__`` members and names
    without a suffix are not samples. A key met twice (a second ``x.png`` in one run, or a run
    of ``x`` after other keys) is a :class:`UserError` naming it."""
    keys: list[str] = []
    seen: set[str] = set()
    suffixes: set[str] = set()
    for name in member_names:
        match = _KEY_AND_SUFFIX.match(name)
        if match is None or re.match(r"__[^/]*__($|/)", name):
            continue
        key, suffix = match.group(1), match.group(2)
        if keys and keys[-1] == key:
            if suffix in suffixes:
                raise UserError(f"shard {shard} holds the key {key!r} twice ({name} again)")
            suffixes.add(suffix)
            continue
        if key in seen:
            raise UserError(f"shard {shard} holds the key {key!r} twice")
        seen.add(key)
        keys.append(key)
        suffixes = {suffix}
    return keys


def member_labels(members: Sequence[tuple[str, bytes | None]]) -> dict[str, int]:
    """The labels a tar's ``.cls`` members hold (:func:`.imageio.tar_members`), by sample key.

    Only decimal labels are returned: a missing or unreadable ``.cls`` stays the reader's
    business (its ``--on-error`` decides), as it always was.
    """
    labels: dict[str, int] = {}
    for name, data in members:
        match = _KEY_AND_SUFFIX.match(name)
        if data is None or match is None or match.group(2).lower() != "cls":
            continue
        text = data.decode("ascii", errors="replace").strip()
        if re.fullmatch(r"[+-]?[0-9]+", text):
            labels.setdefault(match.group(1), int(text))
    return labels


def check_labels(shard: ShardPath, labels: dict[str, int], num_classes: int) -> None:
    """A label outside ``[0, num_classes)`` is a :class:`UserError` naming sample and shard."""
    for key, label in labels.items():
        if not 0 <= label < num_classes:
            raise UserError(
                f"shard {shard}: sample {key!r} has label {label}, outside the "
                f"{num_classes} classes of its index (0 to {num_classes - 1})"
            )


def check_shards_complete(shard_set: ShardSet) -> None:
    """Refuse a damaged shard set before any work starts, with one line naming the shard.

    Each tar must be complete (not cut short, headers intact, its end-of-archive blocks
    present), hold exactly the keys its index entry lists (count and key digest), every label
    must be one of the index's classes, and no key may occur twice in the set (a key is a
    sample's identity, docs/architecture.md).

    Every tar's headers are walked (:func:`.imageio.tar_members`: one small read per member,
    no image decoded, the ``.cls`` members read on the way), also for tars whose size equals the
    ``tar_bytes`` make-shards recorded: a ``.cls`` edited in place keeps the tar's size, and a
    label is only trusted once read (about 100 s for ImageNet-1k's tars, against hours of
    dumping).
    """
    hashes: list[np.ndarray] = []
    for path, info in zip(shard_set.paths, shard_set.index.shards, strict=True):
        try:
            members = tar_members(path)
        except TarDamage as err:
            raise UserError(f"shard {path} is truncated or damaged: {err}") from None
        except OSError as err:
            raise UserError(f"shard {path} cannot be read: {err.strerror or err}") from None
        keys = sample_keys([name for name, _ in members], path)
        if len(keys) != info.num_samples:
            raise UserError(
                f"shard {path} holds {len(keys)} samples, its index entry says {info.num_samples}"
            )
        if key_digest(keys) != info.key_digest:
            raise UserError(f"shard {path} has keys that differ from its index entry")
        check_labels(path, member_labels(members), shard_set.num_classes)
        # Across shards, 8-byte hashes stand in for the keys (a million keys: 8 MB, not 100 MB);
        # a repeated hash is confirmed on the keys themselves before it is called a duplicate.
        hashes.append(np.fromiter(map(hash, keys), dtype=np.int64, count=len(keys)))
    _check_keys_unique_across(shard_set, hashes)


def check_same_classes(val: ShardSet, train: ShardSet) -> None:
    """``--val`` shards must have the training shards' classes: as many, with the same names in
    the same order (a label means the same class in both), or one line says what differs."""
    if val.num_classes != train.num_classes:
        raise UserError(
            f"validation shards have {val.num_classes} classes, training shards {train.num_classes}"
        )
    for i, (a, b) in enumerate(zip(val.class_names, train.class_names, strict=True)):
        if a != b:
            raise UserError(
                f"validation shards name class {i} {a!r}, training shards {b!r}: "
                "they must be labelled alike"
            )


def shard_keys(shard_set: ShardSet) -> list[list[str]]:
    """Every shard's sample keys in tar order (a sample's position is its index here), read
    from the tar headers alone (no image decoded)."""
    return [sample_keys(tar_member_names(path), path) for path in shard_set.paths]


def resolve_complete_shards(spec: str | os.PathLike[str]) -> ShardSet:
    """:func:`resolve_shards`, then :func:`check_shards_complete`: how every stage that reads
    shards opens them, so a damaged tar is refused before any work starts."""
    shard_set = resolve_shards(spec)
    check_shards_complete(shard_set)
    return shard_set


def _check_keys_unique_across(shard_set: ShardSet, hashes: list[np.ndarray]) -> None:
    if len(hashes) < 2:
        return
    values = np.concatenate(hashes)
    owner = np.repeat(np.arange(len(hashes)), [len(h) for h in hashes])
    order = np.argsort(values, kind="stable")
    repeated = np.flatnonzero(values[order][1:] == values[order][:-1])
    for at in repeated.tolist():
        first, second = int(owner[order[at]]), int(owner[order[at + 1]])
        a, b = shard_set.paths[first], shard_set.paths[second]
        shared = set(sample_keys(tar_member_names(a), a)) & set(sample_keys(tar_member_names(b), b))
        if shared:
            key = min(shared)
            raise UserError(
                f"the key {key!r} occurs in two shards: {shard_name(a)} and {shard_name(b)}"
            )


def scan_shards(paths: Sequence[Path]) -> ShardIndex:
    """Build an index for tars without one: names and labels from the members, one decode.

    Channels and format come from the first images (up to 16); the classes are
    ``"0"`` .. ``str(max label)``; mean/std are the ImageNet defaults.
    """
    from PIL import Image

    shards: list[ShardInfo] = []
    all_keys: set[str] = set()
    max_label = -1
    probed = 0
    gray = True
    fmt: str | None = None
    for path in paths:
        if not tar_looks_complete(path):
            raise UserError(f"shard {path} is truncated (it lacks the end-of-archive blocks)")
        keys: list[str] = []
        has_label: set[str] = set()
        try:
            with tarfile.open(path, "r:*") as tar:
                for member in tar:
                    if not member.isreg():
                        continue
                    match = _KEY_AND_SUFFIX.match(member.name)
                    if match is None or re.match(r"__[^/]*__($|/)", member.name):
                        continue
                    key, suffix = match.group(1), match.group(2).lower()
                    if not keys or keys[-1] != key:
                        if key in all_keys:
                            raise UserError(f"shard {path}: key {key!r} occurs more than once")
                        all_keys.add(key)
                        keys.append(key)
                    extracted = tar.extractfile(member)
                    if extracted is None:
                        continue
                    if suffix == "cls":
                        text = extracted.read().decode("ascii", errors="replace").strip()
                        if not text.isdigit():
                            raise UserError(f"shard {path}: {member.name} is not a class id")
                        max_label = max(max_label, int(text))
                        has_label.add(key)
                    elif probed < _CHANNEL_PROBES and suffix in IMAGE_SUFFIXES:
                        with Image.open(extracted) as img:
                            gray = gray and img.mode in ("1", "L", "LA", "I;16", "I")
                        fmt = fmt or suffix
                        probed += 1
        except (tarfile.TarError, OSError, EOFError) as err:
            raise UserError(f"shard {path} cannot be read: {err}") from None
        unlabelled = [k for k in keys if k not in has_label]
        if unlabelled:
            raise UserError(f"shard {path}: sample {unlabelled[0]} has no .cls label")
        shards.append(ShardInfo(path.name, len(keys), key_digest(keys)))
    if fmt is None or max_label < 0:
        raise UserError(f"shards starting with {paths[0]} hold no labelled images")
    channels = 1 if gray else 3
    mean, std = default_stats(channels)
    return ShardIndex(
        shards=tuple(shards),
        class_names=tuple(str(c) for c in range(max_label + 1)),
        source="scan",
        split="unknown",
        channels=channels,
        image_size=None,
        mean=mean,
        std=std,
        format=fmt,
    )
