"""The ``make-shards`` sources: built-in digits, MNIST-family idx files, CIFAR pickles, folders.

A source spec is ``digits`` or ``KIND:DIR`` with KIND one of ``idx``, ``cifar``, ``folder``.
:func:`open_source` turns a spec and a split into a :class:`SourceData`: the keys, labels and
class names of every sample plus a loader that decodes one image on demand (folders can be far
larger than memory); a folder source also lists its files, whose bytes make-shards copies.
Keys are built here, so they are stable across runs: the same input always gives the same key
for the same image.
"""

from __future__ import annotations

import gzip
import pickle
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.errors import UserError
from .imageio import decode_image_file

SOURCE_KINDS = ("digits", "idx", "cifar", "folder")
SPLITS = ("train", "test")

DIGITS_TEST_FRACTION = 0.2
"""Share of each digit class that goes to the ``test`` split."""
DIGITS_SPLIT_SEED = 0
"""Seed of the per-class permutation that defines the digits split; changing it changes keys."""

FOLDER_ORDER_SEED = 0
"""Seed of the permutation that mixes classes across folder shards (see :func:`_open_folder`)."""

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
# PIL modes that hold no colour: a folder made only of these stays one-channel.
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


@dataclass(frozen=True, slots=True)
class SourceData:
    """What a source holds for one split."""

    kind: str
    """``digits``, ``idx``, ``cifar`` or ``folder``."""
    spec: str
    """The spec as given, with the directory made absolute (recorded in the index)."""
    split: str
    keys: Sequence[str]
    labels: Sequence[int]
    class_names: tuple[str, ...]
    channels: int
    load_image: Callable[[int], np.ndarray]
    """Image ``i`` as uint8 ``[H, W]`` (channels 1) or ``[H, W, 3]`` (channels 3)."""
    default_format: str = "png"
    """The encoding of images that must be encoded and have no format of their own."""
    files: Sequence[Path] | None = None
    """Folder sources: image ``i``'s file, whose bytes ``make-shards`` copies when it can."""
    ignored: tuple[str, ...] = ()
    """Folder sources: files left out for their extension (not images), relative to the root."""
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)


def parse_source(spec: str) -> tuple[str, Path | None]:
    """Split ``KIND:DIR`` into its kind and directory; ``digits`` has no directory."""
    kind, sep, rest = spec.partition(":")
    if kind == "digits":
        if sep:
            raise UserError(f"source 'digits' takes no directory (got {spec!r})")
        return "digits", None
    if not sep or kind not in SOURCE_KINDS:
        known = "digits, idx:DIR, cifar:DIR, folder:DIR"
        raise UserError(f"unknown source {spec!r}; expected one of {known}")
    if not rest:
        raise UserError(f"source {spec!r} names no directory")
    return kind, Path(rest).expanduser()


def open_source(spec: str, split: str, *, check_headers: bool = True) -> SourceData:
    """Open a source for ``split`` (``train`` or ``test``); UserError on any bad input.

    A folder's image headers are all read here; with ``check_headers`` an unreadable one is a
    UserError naming the file, without it the file stays in the source (so keys and order do
    not depend on the setting) and fails when decoded (``make-shards --on-error skip``).
    """
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; expected train or test")
    kind, directory = parse_source(spec)
    if directory is not None:
        if not directory.exists():
            raise UserError(f"source directory {directory} does not exist")
        if not directory.is_dir():
            raise UserError(f"source {directory} is not a directory")
        directory = directory.resolve()
    if kind == "digits":
        data = _open_digits(split)
    elif kind == "idx":
        assert directory is not None
        data = _open_idx(directory, split)
    elif kind == "cifar":
        assert directory is not None
        data = _open_cifar(directory, split)
    else:
        assert directory is not None
        data = _open_folder(directory, split, check_headers=check_headers)
    if len(data) == 0:
        raise UserError(f"source {spec} holds no images for split {split}")
    return data


# ------------------------------------------------------------------------------------ digits


def digits_split_indices(
    targets: np.ndarray, split: str, *, test_fraction: float = DIGITS_TEST_FRACTION
) -> np.ndarray:
    """Sorted row indices of ``split`` in the digits data: a seeded, per-class (stratified) cut.

    Each class is permuted with one generator seeded by :data:`DIGITS_SPLIT_SEED`, and the first
    ``round(test_fraction * n_class)`` rows of the permutation go to ``test``; the rest to
    ``train``. The two splits are disjoint and together cover every row.
    """
    rng = np.random.default_rng(DIGITS_SPLIT_SEED)
    test: list[np.ndarray] = []
    for cls in np.unique(targets):
        rows = rng.permutation(np.flatnonzero(targets == cls))
        test.append(rows[: round(test_fraction * len(rows))])
    test_rows = np.sort(np.concatenate(test))
    if split == "test":
        return test_rows
    return np.setdiff1d(np.arange(len(targets)), test_rows)


def _open_digits(split: str) -> SourceData:
    from sklearn.datasets import load_digits

    bunch: Any = load_digits()  # a Bunch; the stubs type the return_X_y tuple too
    targets = np.asarray(bunch.target, dtype=np.int64)
    rows = digits_split_indices(targets, split)
    # Pixel values are 0..16; stretch them onto the 8-bit range.
    images = np.rint(np.asarray(bunch.images, dtype=np.float64)[rows] * (255.0 / 16.0))
    images_u8 = images.clip(0, 255).astype(np.uint8)
    return SourceData(
        kind="digits",
        spec="digits",
        split=split,
        keys=[f"digits_{split}_{i:06d}" for i in range(len(rows))],
        labels=[int(t) for t in targets[rows]],
        class_names=tuple(str(c) for c in range(10)),
        channels=1,
        load_image=lambda i: images_u8[i],
        extra={
            "digits_split_seed": DIGITS_SPLIT_SEED,
            "digits_test_fraction": DIGITS_TEST_FRACTION,
        },
    )


# --------------------------------------------------------------------------------------- idx

_IDX_DTYPES = {0x08: np.uint8}


def read_idx(path: Path) -> np.ndarray:
    """Read one idx file (``.gz`` or plain) of unsigned bytes; UserError when malformed."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as err:
        raise UserError(f"cannot read idx file {path}: {err}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise UserError(f"{path} is not an idx file of unsigned bytes")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise UserError(f"idx file {path} has a truncated header")
    dims = [int.from_bytes(raw[4 + 4 * d : 8 + 4 * d], "big") for d in range(ndim)]
    count = int(np.prod(dims))
    if len(raw) - header != count:
        raise UserError(
            f"idx file {path} should hold {count} bytes of data after its header, "
            f"found {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx(directory: Path, prefix: str, what: str, rank: int) -> Path:
    names = [f"{prefix}-{what}-idx{rank}-ubyte", f"{prefix}-{what}.idx{rank}-ubyte"]
    for name in names:
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise UserError(f"idx source {directory} has no {names[0]}[.gz]")


def _open_idx(directory: Path, split: str) -> SourceData:
    prefix = "train" if split == "train" else "t10k"
    images_path = _find_idx(directory, prefix, "images", 3)
    labels_path = _find_idx(directory, prefix, "labels", 1)
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3:
        raise UserError(f"idx images {images_path} should have 3 dimensions, has {images.ndim}")
    if labels.ndim != 1:
        raise UserError(f"idx labels {labels_path} should have 1 dimension, has {labels.ndim}")
    if len(images) != len(labels):
        raise UserError(
            f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels"
        )
    num_classes = max(10, int(labels.max()) + 1) if len(labels) else 10
    return SourceData(
        kind="idx",
        spec=f"idx:{directory}",
        split=split,
        keys=[f"idx_{split}_{i:06d}" for i in range(len(labels))],
        labels=[int(v) for v in labels],
        class_names=tuple(str(c) for c in range(num_classes)),
        channels=1,
        load_image=lambda i: images[i],
        extra={"files": [images_path.name, labels_path.name]},
    )


# ------------------------------------------------------------------------------------- cifar


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches (dicts, lists, bytes, numpy arrays) and nothing else.

    The batches are pickles; refusing every other global keeps a crafted file from running code.
    """

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _load_pickle(path: Path) -> dict[bytes, Any]:
    try:
        with open(path, "rb") as fh:
            obj = _ArrayUnpickler(fh, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as err:
        raise UserError(f"cannot read CIFAR pickle {path}: {err}") from None
    if not isinstance(obj, dict):
        raise UserError(f"CIFAR pickle {path} does not hold a dict")
    # Pickles written by Python 3 have str keys, the originals (Python 2) bytes; use bytes.
    return {k.encode() if isinstance(k, str) else k: v for k, v in obj.items()}


def _as_str(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _cifar_root(directory: Path) -> Path:
    """The folder holding the batches: ``DIR`` itself or the folder the archives unpack to."""
    if (directory / "batches.meta").exists() or (directory / "meta").exists():
        return directory
    for sub in ("cifar-10-batches-py", "cifar-100-python"):
        if (directory / sub).is_dir():
            return directory / sub
    return directory


def _open_cifar(directory: Path, split: str) -> SourceData:
    root = _cifar_root(directory)
    if (root / "batches.meta").is_file():
        variant, label_field, names_field = "cifar10", b"labels", b"label_names"
        meta = _load_pickle(root / "batches.meta")
        if split == "train":
            batches = sorted(root.glob("data_batch_*"), key=lambda p: p.name)
        else:
            batches = [root / "test_batch"]
    elif (root / "meta").is_file():
        variant, label_field, names_field = "cifar100", b"fine_labels", b"fine_label_names"
        meta = _load_pickle(root / "meta")
        batches = [root / ("train" if split == "train" else "test")]
    else:
        raise UserError(f"CIFAR source {directory} has neither batches.meta nor meta")
    if names_field not in meta:
        raise UserError(f"CIFAR meta in {root} has no {names_field.decode()}")
    class_names = tuple(_as_str(n) for n in meta[names_field])
    batches = [b for b in batches if b.is_file()]
    if not batches:
        raise UserError(f"CIFAR source {root} has no {split} batches")
    parts: list[np.ndarray] = []
    labels: list[int] = []
    for batch_path in batches:
        batch = _load_pickle(batch_path)
        if b"data" not in batch or label_field not in batch:
            raise UserError(f"CIFAR batch {batch_path} lacks data or {label_field.decode()}")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        batch_labels = [int(v) for v in batch[label_field]]
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(batch_labels):
            raise UserError(
                f"CIFAR batch {batch_path} has data of shape {data.shape} "
                f"for {len(batch_labels)} labels (expected [N, 3072])"
            )
        parts.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.extend(batch_labels)
    images = np.ascontiguousarray(np.concatenate(parts))
    bad = [v for v in labels if not 0 <= v < len(class_names)]
    if bad:
        raise UserError(f"CIFAR labels in {root} include {bad[0]}, outside the class names")
    return SourceData(
        kind="cifar",
        spec=f"cifar:{directory}",
        split=split,
        keys=[f"{variant}_{split}_{i:06d}" for i in range(len(labels))],
        labels=labels,
        class_names=class_names,
        channels=3,
        load_image=lambda i: images[i],
        extra={"variant": variant, "batches": [b.name for b in batches]},
    )


# ------------------------------------------------------------------------------------ folder

_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-]")


def folder_key(class_name: str, stem: str) -> str:
    """A dot-free key from a class folder and a file stem: other characters become ``_``."""
    return _UNSAFE_KEY_CHARS.sub("_", f"{class_name}_{stem}")


def _folder_root(directory: Path, split: str) -> Path:
    """``DIR/train`` or ``DIR/val``/``DIR/test`` when they hold class folders, else ``DIR``."""
    candidates = ("train",) if split == "train" else ("val", "test")
    for name in candidates:
        sub = directory / name
        if sub.is_dir() and any(p.is_dir() for p in sub.iterdir()):
            return sub
    return directory


def _image_mode(path: Path, *, check: bool) -> str | None:
    """Open an image's header (cheap) to learn its mode. An unreadable header is a UserError
    naming the file with ``check``, else None."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return str(img.mode)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        if check:
            raise UserError(f"cannot read image {path}: {err}") from None
        return None


def load_image_file(path: Path, channels: int) -> np.ndarray:
    """Decode an image file to uint8 ``[H, W]`` (channels 1) or ``[H, W, 3]``; UserError if bad."""
    try:
        return decode_image_file(path, channels)[1]
    except ValueError as err:
        raise UserError(f"cannot read image {path}: {err}") from None


def _open_folder(directory: Path, split: str, *, check_headers: bool) -> SourceData:
    root = _folder_root(directory, split)
    class_dirs = sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )
    if not class_dirs:
        raise UserError(f"image folder {root} has no class subfolders")
    files: list[Path] = []
    labels: list[int] = []
    keys: list[str] = []
    seen: dict[str, Path] = {}
    ignored: list[str] = []
    all_gray = True
    for label, class_dir in enumerate(class_dirs):
        for path in sorted(class_dir.rglob("*")):
            if not path.is_file() or path.name.startswith("."):
                continue
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                ignored.append(path.relative_to(root).as_posix())
                continue
            rel_stem = path.relative_to(class_dir).with_suffix("").as_posix()
            key = folder_key(class_dir.name, rel_stem)
            if key in seen:
                raise UserError(f"images {seen[key]} and {path} map to the same key {key!r}")
            seen[key] = path
            # Reading every header up front rejects unreadable files before any tar is written
            # (about 0.1 ms a file from the page cache). An unreadable one, when allowed, does
            # not vote on the channels.
            mode = _image_mode(path, check=check_headers)
            all_gray = all_gray and (mode is None or mode in _GRAY_MODES)
            files.append(path)
            labels.append(label)
            keys.append(key)
    channels = 1 if all_gray and files else 3
    # Files come class by class; a fixed permutation mixes classes in every shard, which the
    # in-block mixup partners and shard-level shuffling of the readers rely on.
    order = np.random.default_rng(FOLDER_ORDER_SEED).permutation(len(files))
    files = [files[i] for i in order]
    labels = [labels[i] for i in order]
    keys = [keys[i] for i in order]
    return SourceData(
        kind="folder",
        spec=f"folder:{directory}",
        split=split,
        keys=keys,
        labels=labels,
        class_names=tuple(p.name for p in class_dirs),
        channels=channels,
        load_image=lambda i: load_image_file(files[i], channels),
        # Images in formats other than JPEG and PNG are encoded once, losslessly.
        default_format="png",
        files=files,
        ignored=tuple(ignored),
        extra={"root": str(root), "order_seed": FOLDER_ORDER_SEED},
    )
