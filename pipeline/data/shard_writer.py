"""One tar of ``make-shards``: a :class:`ShardJob` in, the tar and its receipt out.

A job holds everything its tar depends on and pickles, so worker processes run jobs in any
order and the bytes do not depend on which process wrote them (parallel equals serial).

What goes into the tar, per sample:

- **folder sources** (``files``): a JPEG or PNG file is copied byte for byte, under the
  extension of its content (``.jpg`` for JPEG, ``.png`` for PNG, whatever the file is called).
  It is re-encoded only when it must change: its shorter side exceeds ``resize_short`` (then it
  is resized to that shorter side, bicubic, and re-encoded in its own format), or ``format``
  asks for the other format. Other formats PIL reads (BMP, GIF, WebP, TIFF, PPM) are encoded
  once as ``format`` (default PNG: lossless). Every image is decoded in full either way: that
  is the check that it will decode in training, and the pixels feed the index statistics.
- **array sources** (digits, idx, CIFAR; ``images``): each array is encoded as ``format``.

The :class:`ShardResult` is what the index needs from the shard (count, key digest, exact
integer pixel sums, image sizes) and is saved beside the tar as its *receipt*,
``NAME.tar.receipt.json``, once the tar is in place. :func:`run_job` trusts an existing tar only
when its receipt carries the job's :meth:`ShardJob.plan_digest` and the tar's size and sha256
still match; a killed ``make-shards`` therefore resumes without redoing finished shards.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.atomic import atomic_write_json, atomic_writer
from ..runtime.errors import UserError
from ..runtime.hashing import HashingWriter, file_sha256
from .imageio import OnError, decode_image_file, image_kind
from .index import key_digest

FORMATS = ("png", "jpg")
"""Encodings ``make-shards`` writes."""

RECEIPT_SUFFIX = ".receipt.json"
"""A finished tar's receipt is ``NAME.tar`` + this suffix."""

RECEIPT_VERSION = 1
"""Part of every plan digest: bump it when the writer's output for the same input changes."""


@dataclass(frozen=True, slots=True)
class ShardJob:
    """Everything one tar depends on. Exactly one of ``files`` and ``images`` is set."""

    path: Path
    """The tar to write."""
    keys: tuple[str, ...]
    labels: tuple[int, ...]
    channels: int
    """1 or 3: the pixels the statistics (and any re-encoding) use."""
    files: tuple[Path, ...] | None
    """Folder sources: the original image files, copied when possible."""
    images: tuple[np.ndarray, ...] | None
    """Array sources: uint8 ``[H, W]`` (channels 1) or ``[H, W, 3]``."""
    format: str | None
    """``--format``: the encoding every image ends up in; None keeps JPEG/PNG files as they are."""
    default_format: str
    """The encoding of images that must be encoded and have no format of their own."""
    jpeg_quality: int
    resize_short: int | None
    on_error: OnError
    root: Path | None = None
    """The folder ``files`` are named relative to in the skipped list."""

    def __post_init__(self) -> None:
        if (self.files is None) == (self.images is None):
            raise ValueError("a shard job needs exactly one of files and images")

    def plan_digest(self) -> str:
        """sha256 over the job's inputs: names, keys, labels, settings, the library that
        encodes, and each file's size and mtime (each array's bytes). ``on_error`` is left
        out: a shard that finished under one mode holds what the other would have written,
        unless it skipped images (see :func:`run_job`)."""
        import PIL

        digest = hashlib.sha256()

        def put(*parts: object) -> None:
            digest.update(("\t".join(str(p) for p in parts) + "\n").encode())

        put("make-shards", RECEIPT_VERSION, PIL.__version__, self.path.name, self.channels)
        put(self.format, self.default_format, self.jpeg_quality, self.resize_short)
        for i, key in enumerate(self.keys):
            put(key, self.labels[i])
            if self.files is not None:
                put(self.files[i], _file_identity(self.files[i]))
            else:
                assert self.images is not None
                image = np.ascontiguousarray(self.images[i])
                put(image.shape, image.dtype)
                digest.update(image.tobytes())
        return digest.hexdigest()


def _file_identity(path: Path) -> str:
    try:
        stat = path.stat()
    except OSError:
        return "missing"
    return f"{stat.st_size} {stat.st_mtime_ns}"


@dataclass(frozen=True, slots=True)
class SkippedImage:
    """An image left out with ``--on-error skip``."""

    key: str
    file: str
    """The file relative to the source folder (or the key for array sources)."""
    error: str

    def to_dict(self) -> dict[str, str]:
        """As listed in a receipt and in the index's ``skipped``."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class ShardResult:
    """What a written tar holds, as the index needs it; saved as the tar's receipt."""

    name: str
    num_samples: int
    key_digest: str
    pixel_sum: tuple[int, ...]
    """Per channel, the sum of every pixel value (0..255) written: exact, so shard results
    combine in any grouping to the same statistics."""
    pixel_sq_sum: tuple[int, ...]
    pixel_count: int
    """Pixels per channel."""
    sizes: tuple[tuple[int, int], ...]
    """The distinct (height, width) of the images, sorted."""
    formats: dict[str, int]
    """Members per image extension."""
    copied: int
    """Images whose original bytes were stored."""
    encoded: int
    """Images stored after decoding and encoding (arrays, other formats, resized ones)."""
    resized: int
    """Of ``encoded``, those made smaller by ``resize_short``."""
    skipped: tuple[SkippedImage, ...]
    tar_bytes: int
    tar_sha256: str
    plan: str
    """The job's :meth:`ShardJob.plan_digest`."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": RECEIPT_VERSION,
            "name": self.name,
            "num_samples": self.num_samples,
            "key_digest": self.key_digest,
            "pixel_sum": list(self.pixel_sum),
            "pixel_sq_sum": list(self.pixel_sq_sum),
            "pixel_count": self.pixel_count,
            "sizes": [list(s) for s in self.sizes],
            "formats": dict(self.formats),
            "copied": self.copied,
            "encoded": self.encoded,
            "resized": self.resized,
            "skipped": [s.to_dict() for s in self.skipped],
            "tar_bytes": self.tar_bytes,
            "tar_sha256": self.tar_sha256,
            "plan": self.plan,
        }

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> ShardResult:
        if obj.get("version") != RECEIPT_VERSION:
            raise ValueError(f"receipt version {obj.get('version')!r}")
        return cls(
            name=str(obj["name"]),
            num_samples=int(obj["num_samples"]),
            key_digest=str(obj["key_digest"]),
            pixel_sum=tuple(int(v) for v in obj["pixel_sum"]),
            pixel_sq_sum=tuple(int(v) for v in obj["pixel_sq_sum"]),
            pixel_count=int(obj["pixel_count"]),
            sizes=tuple((int(h), int(w)) for h, w in obj["sizes"]),
            formats={str(k): int(v) for k, v in obj["formats"].items()},
            copied=int(obj["copied"]),
            encoded=int(obj["encoded"]),
            resized=int(obj["resized"]),
            skipped=tuple(
                SkippedImage(str(s["key"]), str(s["file"]), str(s["error"])) for s in obj["skipped"]
            ),
            tar_bytes=int(obj["tar_bytes"]),
            tar_sha256=str(obj["tar_sha256"]),
            plan=str(obj["plan"]),
        )


def receipt_path(tar: Path) -> Path:
    """Where the receipt of ``tar`` lives."""
    return tar.with_name(tar.name + RECEIPT_SUFFIX)


def run_job(job: ShardJob) -> tuple[ShardResult, bool]:
    """The job's result and whether an existing tar was kept: a tar is kept when its receipt
    carries the same plan digest, its size and sha256 match, and (for a shard that skipped
    images) ``on_error`` is ``skip``; otherwise the tar is written anew."""
    finished = _finished_result(job)
    if finished is not None:
        return finished, True
    return write_shard(job), False


def _finished_result(job: ShardJob) -> ShardResult | None:
    try:
        result = ShardResult.from_dict(json.loads(receipt_path(job.path).read_bytes()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if result.name != job.path.name or result.plan != job.plan_digest():
        return None
    if result.skipped and job.on_error != "skip":
        return None
    try:
        size, sha256 = file_sha256(job.path)
    except OSError:
        return None
    return result if (size, sha256) == (result.tar_bytes, result.tar_sha256) else None


def resized_shape(height: int, width: int, short: int | None) -> tuple[int, int] | None:
    """(height, width) with the shorter side made ``short`` (the longer one scaled and truncated,
    as torchvision's ``Resize(short)``); None when the shorter side is at most ``short``."""
    if short is None or min(height, width) <= short:
        return None
    if height <= width:
        return short, int(short * width / height)
    return int(short * height / width), short


def encode_image(image: np.ndarray, fmt: str, *, jpeg_quality: int = 95) -> bytes:
    """PNG or JPEG bytes of a uint8 ``[H, W]`` (mode L) or ``[H, W, 3]`` (RGB) array."""
    from PIL import Image

    buffer = io.BytesIO()
    pil = Image.fromarray(np.ascontiguousarray(image))
    if fmt == "png":
        pil.save(buffer, format="PNG")
    else:
        pil.save(buffer, format="JPEG", quality=jpeg_quality)
    return buffer.getvalue()


def _resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    pil = Image.fromarray(np.ascontiguousarray(image))
    return np.asarray(pil.resize((shape[1], shape[0]), Image.Resampling.BICUBIC))


@dataclass(frozen=True, slots=True)
class _Member:
    ext: str
    data: bytes
    pixels: np.ndarray
    """What a reader decodes (up to JPEG's loss for re-encoded images), for the statistics."""
    copied: bool
    resized: bool


class _Unreadable(Exception):
    """An image that does not decode; the message is the reason."""


def _decode_file(path: Path, channels: int) -> tuple[bytes, str | None, np.ndarray]:
    """The file's bytes, its copyable extension (None for other formats) and its pixels,
    decoded by the readers' own decoder (the check that training will decode it)."""
    try:
        data, pixels = decode_image_file(path, channels)
    except ValueError as err:
        raise _Unreadable(str(err)) from None
    return data, image_kind(data), pixels


def _member(job: ShardJob, i: int) -> _Member:
    if job.files is not None:
        data, kind, pixels = _decode_file(job.files[i], job.channels)
        target = job.format or kind or job.default_format
    else:
        assert job.images is not None
        pixels = job.images[i]
        expected_ndim = 2 if job.channels == 1 else 3
        if pixels.dtype != np.uint8 or pixels.ndim != expected_ndim:
            raise UserError(
                f"image {job.keys[i]} has shape {pixels.shape} and dtype {pixels.dtype}, "
                f"expected uint8 with {job.channels} channel(s)"
            )
        data, kind, target = b"", None, job.format or job.default_format
    shape = resized_shape(int(pixels.shape[0]), int(pixels.shape[1]), job.resize_short)
    if shape is None and kind == target:
        return _Member(target, data, pixels, copied=True, resized=False)
    if shape is not None:
        pixels = _resize(pixels, shape)
    encoded = encode_image(pixels, target, jpeg_quality=job.jpeg_quality)
    return _Member(target, encoded, pixels, copied=False, resized=shape is not None)


_LEVELS = np.arange(256, dtype=np.int64)


def pixel_histogram(pixels: np.ndarray) -> np.ndarray:
    """int64 ``[channels, 256]``: how many pixels of each channel take each value.

    PIL's C histogram: twenty times faster than summing an int64 copy of a large image, and the
    sums it gives are exact.
    """
    from PIL import Image

    counts = Image.fromarray(np.ascontiguousarray(pixels)).histogram()
    return np.asarray(counts, dtype=np.int64).reshape(-1, 256)


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    # Fixed metadata (no mtime, owner) keeps tars byte-identical across runs and machines.
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def write_shard(job: ShardJob) -> ShardResult:
    """Write the job's tar (atomically), then its receipt; returns the result.

    An image that does not decode raises :class:`UserError` naming the file
    (``on_error="fail"``) or is left out and listed (``"skip"``).
    """
    plan = job.plan_digest()
    channels = job.channels
    pixel_sum = np.zeros(channels, dtype=np.int64)
    pixel_sq_sum = np.zeros(channels, dtype=np.int64)
    pixel_count = 0
    sizes: set[tuple[int, int]] = set()
    formats: dict[str, int] = {}
    kept: list[str] = []
    skipped: list[SkippedImage] = []
    copied = encoded = resized = 0
    # The tar is hashed as it is written: no second read of a large file.
    with (
        atomic_writer(job.path) as fh,
        HashingWriter(fh) as hashed,
        tarfile.open(fileobj=hashed, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for i, key in enumerate(job.keys):
            try:
                member = _member(job, i)
            except _Unreadable as err:
                name = _source_name(job, i)
                if job.on_error == "fail":
                    raise UserError(f"cannot read image {name}: {err}") from None
                skipped.append(SkippedImage(key, _source_name(job, i, relative=True), str(err)))
                continue
            counts = pixel_histogram(member.pixels)
            pixel_sum += counts @ _LEVELS
            pixel_sq_sum += counts @ np.square(_LEVELS)
            pixel_count += int(counts[0].sum())
            sizes.add((int(member.pixels.shape[0]), int(member.pixels.shape[1])))
            formats[member.ext] = formats.get(member.ext, 0) + 1
            copied += member.copied
            encoded += not member.copied
            resized += member.resized
            _add_member(tar, f"{key}.{member.ext}", member.data)
            _add_member(tar, f"{key}.cls", str(int(job.labels[i])).encode("ascii"))
            kept.append(key)
    result = ShardResult(
        name=job.path.name,
        num_samples=len(kept),
        key_digest=key_digest(kept),
        pixel_sum=tuple(int(v) for v in pixel_sum),
        pixel_sq_sum=tuple(int(v) for v in pixel_sq_sum),
        pixel_count=pixel_count,
        sizes=tuple(sorted(sizes)),
        formats=dict(sorted(formats.items())),
        copied=copied,
        encoded=encoded,
        resized=resized,
        skipped=tuple(skipped),
        tar_bytes=hashed.size,
        tar_sha256=hashed.hexdigest(),
        plan=plan,
    )
    atomic_write_json(receipt_path(job.path), result.to_dict())
    return result


def _source_name(job: ShardJob, i: int, *, relative: bool = False) -> str:
    if job.files is None:
        return job.keys[i]
    path = job.files[i]
    if relative and job.root is not None and path.is_relative_to(job.root):
        return path.relative_to(job.root).as_posix()
    return str(path)
