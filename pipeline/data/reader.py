"""Reading shards with stable identity: one :class:`Sample` per key, in tar order.

A sample's identity is ``(shard, position)`` plus its ``key``; positions count every key in the
tar, including those that could not be decoded (``on_error="skip"`` yields them with
``image=None``), so a consumer's row arithmetic never drifts.

Who reads which shard (ranks, DataLoader workers) is decided by the stream planner
(:mod:`.planning`), not here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..runtime.console import warn
from ..runtime.errors import UserError
from .imageio import (
    IMAGE_SUFFIXES,
    NVJPEG_BATCH,
    Decoder,
    OnError,
    decode_batch,
    decode_image_bytes,
    tar_looks_complete,
)
from .index import ShardInfo, key_digest
from .remote import ShardPath, exists, is_remote, open_shard, shard_name
from .shard_set import ShardSet


@dataclass(frozen=True, slots=True)
class Sample:
    """One sample of a shard, with where it came from."""

    key: str
    label: int
    """Class id from ``{key}.cls``; -1 when the label itself could not be read."""
    image: torch.Tensor | None
    """uint8 ``[C, H, W]``; None when the sample could not be decoded (``on_error="skip"``)."""
    shard: str
    """Basename of the tar."""
    position: int
    """Index of the sample within its shard (0-based, counting undecodable samples)."""
    error: str | None = None
    """Why ``image`` is None."""


def _reason(err: BaseException) -> str:
    # webdataset appends stream objects to exception args; the first arg is the message.
    text = str(err.args[0]) if err.args else type(err).__name__
    return " ".join(text.split()) or type(err).__name__


def _label(raw: dict[str, Any]) -> int:
    data = raw.get("cls")
    if data is None:
        raise ValueError("has no .cls label")
    try:
        return int(bytes(data).decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        text = bytes(data)[:20]
        raise ValueError(f"has a .cls label that is not a decimal integer: {text!r}") from None


def _image_member(raw: dict[str, Any]) -> tuple[str, bytes]:
    for suffix in IMAGE_SUFFIXES:
        if suffix in raw:
            return suffix, bytes(raw[suffix])
    raise ValueError("has no image member")


@dataclass(frozen=True, slots=True)
class _Encoded:
    """A sample read from the tar whose image is not decoded yet."""

    key: str
    label: int
    position: int
    suffix: str
    data: bytes


def _decoded(
    pending: list[_Encoded], channels: int, decoder: Decoder, keep_on_device: bool = False
) -> list[torch.Tensor | str]:
    """Each pending image decoded, or why it cannot be (one message per image)."""
    if len(pending) > 1:
        try:
            datas = [p.data for p in pending]
            return list(decode_batch(datas, channels, decoder, keep_on_device=keep_on_device))
        except Exception:  # one bad image fails the batch: decode one by one to tell which
            pass
    out: list[torch.Tensor | str] = []
    for p in pending:
        try:
            out.append(decode_image_bytes(p.data, channels, decoder))
        except Exception as err:  # torchvision and PIL raise many types for corrupt data
            out.append(f"image .{p.suffix} cannot be decoded ({_reason(err)})")
    return out


def iter_shard(
    path: str | os.PathLike[str],
    *,
    channels: int,
    on_error: OnError = "fail",
    expected: ShardInfo | None = None,
    decoder: Decoder = "torchvision",
    keep_on_device: bool = False,
) -> Iterator[Sample]:
    """Read one tar in order, one :class:`Sample` per key, images as uint8 ``[C, H, W]``.

    Args:
        path: the tar: a local path, an fsspec URL or a ``pipe:`` command (:mod:`.remote`).
        channels: 1 (decoded as grayscale) or 3 (RGB).
        on_error: ``"fail"`` raises :class:`UserError` naming the shard (and key) at the first
            truncated tar, corrupt image or missing label. ``"skip"`` yields undecodable samples
            with ``image=None`` and ``error`` set, and stops with a warning where a damaged tar
            cannot be read further.
        expected: the shard's index entry; when given, a different sample count or key digest
            at the end is an error (``fail``) or a warning (``skip``).
        decoder: :mod:`.imageio`'s decoder (a resolved one, not ``auto``).
        keep_on_device: ``nvjpeg`` only: leave batch-decoded images on the GPU (views
            rendered there, ``--render-device cuda``); every other image is a CPU tensor.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    shard: ShardPath = path if isinstance(path, str) and is_remote(path) else Path(path)
    name = shard_name(shard)
    if not (shard.is_file() if isinstance(shard, Path) else exists(shard)):
        raise UserError(f"shard {shard} does not exist")
    if on_error == "fail" and not tar_looks_complete(shard):
        raise UserError(f"shard {shard} is truncated (it lacks the end-of-archive blocks)")

    tar_errors: list[str] = []

    def handler(err: Exception) -> bool:
        # webdataset stops quietly when a handler returns False, so "fail" must re-raise.
        if on_error == "fail":
            raise err
        tar_errors.append(_reason(err))
        return True

    with _samples(shard, handler) as stream:
        yield from _checked_samples(
            stream,
            shard,
            name,
            channels=channels,
            on_error=on_error,
            expected=expected,
            tar_errors=tar_errors,
            decoder=decoder,
            keep_on_device=keep_on_device,
        )


@contextmanager
def _samples(
    shard: ShardPath, handler: Callable[[Exception], bool]
) -> Iterator[Iterator[dict[str, Any]]]:
    """webdataset's samples of one tar: opened by webdataset for a local file, through
    :func:`.remote.open_shard` (fsspec or the pipe's output) otherwise."""
    from webdataset.tariterators import group_by_keys, tar_file_expander, tarfile_samples

    if isinstance(shard, Path):
        yield iter(tarfile_samples([{"url": str(shard)}], handler=handler))
        return
    with open_shard(shard) as (raw, _):
        source = [{"url": shard, "stream": raw}]
        yield iter(group_by_keys(tar_file_expander(source, handler=handler), handler=handler))


def _checked_samples(
    stream: Iterator[dict[str, Any]],
    shard: ShardPath,
    name: str,
    *,
    channels: int,
    on_error: OnError,
    expected: ShardInfo | None,
    tar_errors: list[str],
    decoder: Decoder,
    keep_on_device: bool = False,
) -> Iterator[Sample]:
    keys: list[str] = []
    seen: set[str] = set()
    # The GPU decoder wants batches; the CPU decoders decode as they read (errors in order).
    group = NVJPEG_BATCH if decoder == "nvjpeg" else 1
    pending: list[_Encoded] = []

    def flush() -> Iterator[Sample]:
        for p, image in zip(
            pending, _decoded(pending, channels, decoder, keep_on_device), strict=True
        ):
            if isinstance(image, str):
                if on_error == "fail":
                    raise UserError(f"shard {shard}: sample {p.key} {image}")
                yield Sample(p.key, p.label, None, name, p.position, error=image)
            else:
                yield Sample(p.key, p.label, image, name, p.position)
        pending.clear()

    while True:
        try:
            raw = next(stream)
        except StopIteration:
            break
        except Exception as err:  # tarfile/gzip errors surface here in "fail" mode
            after = f" after key {keys[-1]}" if keys else ""
            reason = _reason(err)
            raise UserError(f"shard {shard} is truncated or corrupt{after}: {reason}") from None
        key = str(raw["__key__"])
        position = len(keys)
        keys.append(key)
        if key in seen:
            raise UserError(f"shard {shard} holds the key {key!r} twice")
        seen.add(key)
        label = -1
        try:
            label = _label(raw)
            suffix, data = _image_member(raw)
        except ValueError as err:
            yield from flush()
            if on_error == "fail":
                raise UserError(f"shard {shard}: sample {key} {err}") from None
            yield Sample(key, label, None, name, position, error=str(err))
            continue
        pending.append(_Encoded(key, label, position, suffix, data))
        if len(pending) >= group:
            yield from flush()
    yield from flush()

    if on_error == "skip" and (tar_errors or not tar_looks_complete(shard)):
        reason = tar_errors[0] if tar_errors else "it lacks the end-of-archive blocks"
        warn(f"shard {shard} is damaged; stopped after {len(keys)} samples: {reason}")
    if expected is not None:
        problem = None
        if len(keys) != expected.num_samples:
            problem = f"holds {len(keys)} readable samples, the index says {expected.num_samples}"
        elif key_digest(keys) != expected.key_digest:
            problem = "has keys that differ from its index entry"
        if problem is not None:
            if on_error == "fail":
                raise UserError(f"shard {shard} {problem}")
            warn(f"shard {shard} {problem}")


def iter_samples(
    shard_set: ShardSet,
    *,
    channels: int | None = None,
    on_error: OnError = "fail",
    shards: Sequence[str] | None = None,
    decoder: Decoder = "torchvision",
) -> Iterator[Sample]:
    """Every sample of ``shard_set`` (or of the named ``shards`` of it), shard by shard, in order.

    ``channels`` defaults to the shard set's own. Each shard is checked against its index entry,
    and a label outside the set's classes is treated like an undecodable sample.
    """
    wanted = shard_set.names if shards is None else list(shards)
    num_classes = shard_set.num_classes
    for name in wanted:
        for sample in iter_shard(
            shard_set.path(name),
            channels=channels or shard_set.channels,
            on_error=on_error,
            expected=shard_set.index.shard(name),
            decoder=decoder,
        ):
            if sample.image is not None and not 0 <= sample.label < num_classes:
                problem = f"has label {sample.label}, outside the {num_classes} classes"
                if on_error == "fail":
                    raise UserError(f"shard {name}: sample {sample.key} {problem}")
                sample = Sample(sample.key, sample.label, None, name, sample.position, problem)
            yield sample
