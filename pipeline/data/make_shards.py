"""``make-shards``: write a source's split as WebDataset tars plus ``index.json``.

Each tar holds ``{key}.{png|jpg}`` and ``{key}.cls`` (the decimal label) per sample, with fixed
member metadata so the same input gives byte-identical tars. Writes are crash-safe:

1. a marker file (:data:`INCOMPLETE_MARKER`) says the directory is being written;
2. every tar is written as ``<name>.partial`` and renamed when complete
   (:func:`..runtime.atomic.atomic_writer`: disk full or a read-only directory is one line);
3. ``index.json`` is written (atomically) after the last tar, then the marker is removed.

A killed run therefore leaves no index (and a marker), which readers treat as incomplete; a
failing run removes what it wrote.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..runtime.atomic import atomic_write_bytes, atomic_writer, check_output_dir
from ..runtime.console import make_progress
from ..runtime.errors import UserError
from ..runtime.options import check_choices, check_numbers, option
from .index import INCOMPLETE_MARKER, INDEX_FILENAME, ShardIndex, ShardInfo, key_digest
from .sources import SPLITS, SourceData, open_source

FORMATS = ("png", "jpg")


@dataclass(frozen=True, slots=True)
class MakeShardsConfig:
    """What ``make-shards`` writes, and where."""

    source: str = option(
        help="digits (built in, no download), idx:DIR (MNIST-family idx files), "
        "cifar:DIR (CIFAR-10/100 python batches) or folder:DIR (one subfolder per class)."
    )
    out_dir: Path = option(help="Directory for the tars and index.json (one per split).")
    split: str = option("train", help="Which split of the source to write.", choices=SPLITS)
    shard_size: int = option(1000, help="Samples per tar (the last tar holds the rest).", minimum=1)
    format: str | None = option(
        None, help="Image encoding (default: png; jpg for folder:DIR).", choices=FORMATS
    )
    overwrite: bool = option(False, help="Replace the shards in a non-empty OUT_DIR.")
    jpeg_quality: int = option(
        95, help="JPEG quality when the format is jpg.", flag="", minimum=1, maximum=100
    )

    def __post_init__(self) -> None:
        check_numbers(self)
        check_choices(self)


def shard_name(split: str, number: int) -> str:
    """``{split}-{number:06d}.tar``."""
    return f"{split}-{number:06d}.tar"


def _is_ours(path: Path) -> bool:
    """Files a previous make-shards may have left: tars, partial files, the index, the marker."""
    name = path.name
    return (
        name.endswith((".tar", ".tar.partial"))
        or name in (INDEX_FILENAME, INDEX_FILENAME + ".partial", INCOMPLETE_MARKER)
    ) and path.is_file()


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise UserError(f"output directory {out_dir} is not empty; pass --overwrite to replace")
        # Only remove what make-shards writes; anything else in the directory is the user's.
        for path in sorted(out_dir.iterdir()):
            if _is_ours(path):
                path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


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


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    # Fixed metadata (no mtime, owner) keeps tars byte-identical across runs and machines.
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


class _PixelStats:
    """Running per-channel sums for the mean and std of every pixel in [0, 1]."""

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self.total = np.zeros(channels, dtype=np.float64)
        self.total_sq = np.zeros(channels, dtype=np.float64)
        self.count = 0

    def add(self, image: np.ndarray) -> None:
        pixels = image.reshape(-1, self.channels).astype(np.float64) / 255.0
        self.total += pixels.sum(axis=0)
        self.total_sq += np.square(pixels).sum(axis=0)
        self.count += pixels.shape[0]

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        mean = self.total / max(self.count, 1)
        var = np.maximum(self.total_sq / max(self.count, 1) - np.square(mean), 0.0)
        return tuple(round(float(m), 6) for m in mean), tuple(
            round(float(s), 6) for s in np.sqrt(var)
        )


def _check_keys(data: SourceData) -> None:
    seen: set[str] = set()
    for key in data.keys:
        if not key or "." in key or "/" in key:
            raise UserError(f"source {data.spec} produced an invalid key {key!r}")
        if key in seen:
            raise UserError(f"source {data.spec} produced the key {key!r} twice")
        seen.add(key)


def _write_tar(
    path: Path,
    data: SourceData,
    rows: range,
    fmt: str,
    jpeg_quality: int,
    stats: _PixelStats,
    sizes: set[tuple[int, int]],
    on_sample: Callable[[], None],
) -> None:
    with (
        atomic_writer(path) as fh,
        tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for i in rows:
            image = data.load_image(i)
            expected_ndim = 2 if data.channels == 1 else 3
            if image.dtype != np.uint8 or image.ndim != expected_ndim:
                raise UserError(
                    f"source {data.spec}: image {data.keys[i]} has shape {image.shape} "
                    f"and dtype {image.dtype}, expected uint8 with {data.channels} channel(s)"
                )
            stats.add(image)
            sizes.add((int(image.shape[0]), int(image.shape[1])))
            key = data.keys[i]
            encoded = encode_image(image, fmt, jpeg_quality=jpeg_quality)
            _add_member(tar, f"{key}.{fmt}", encoded)
            _add_member(tar, f"{key}.cls", str(int(data.labels[i])).encode("ascii"))
            on_sample()


def make_shards(cfg: MakeShardsConfig) -> ShardIndex:
    """Write ``cfg.source``'s ``cfg.split`` into ``cfg.out_dir``; returns the index written.

    Raises :class:`UserError` for a bad source, a non-empty output without ``overwrite``, or an
    unreadable image (named). On any failure the tars of this run are removed and no
    ``index.json`` is written.
    """
    # Open (and validate) the source before touching the output directory.
    data = open_source(cfg.source, cfg.split)
    _check_keys(data)
    fmt = cfg.format or data.default_format
    out_dir = Path(cfg.out_dir)
    check_output_dir(out_dir)
    _prepare_out_dir(out_dir, cfg.overwrite)

    marker = out_dir / INCOMPLETE_MARKER
    atomic_write_bytes(marker, b"make-shards is writing this directory\n")
    written: list[Path] = []
    stats = _PixelStats(data.channels)
    sizes: set[tuple[int, int]] = set()
    shards: list[ShardInfo] = []
    try:
        with make_progress() as progress:
            task = progress.add_task(f"make-shards {cfg.split}", total=len(data), unit="img")

            def advance() -> None:
                progress.advance(task)

            for number, start in enumerate(range(0, len(data), cfg.shard_size)):
                rows = range(start, min(start + cfg.shard_size, len(data)))
                path = out_dir / shard_name(cfg.split, number)
                written.append(path)
                _write_tar(path, data, rows, fmt, cfg.jpeg_quality, stats, sizes, advance)
                keys = [data.keys[i] for i in rows]
                shards.append(ShardInfo(path.name, len(keys), key_digest(keys)))
        mean, std = stats.mean_std()
        index = ShardIndex(
            shards=tuple(shards),
            class_names=data.class_names,
            source=data.spec,
            split=cfg.split,
            channels=data.channels,
            image_size=next(iter(sizes)) if len(sizes) == 1 else None,
            mean=mean,
            std=std,
            format=fmt,
            extra=data.extra,
        )
        index.save(out_dir)
    except BaseException:
        for path in written:
            path.with_name(path.name + ".partial").unlink(missing_ok=True)
            path.unlink(missing_ok=True)
        marker.unlink(missing_ok=True)
        raise
    marker.unlink(missing_ok=True)
    return index
