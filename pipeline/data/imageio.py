"""Image decoding and tar checks shared by the shard writer, the scanner and the reader."""

from __future__ import annotations

import gzip
import io
import os
import zlib
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np

from .remote import ShardPath, is_pipe, is_remote, open_shard, starts_with_gzip

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

IMAGE_SUFFIXES = ("png", "jpg", "jpeg", "webp", "ppm", "pgm", "bmp", "tif", "tiff", "gif")
"""Member extensions that count as a sample's image, in order of preference."""

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I"})


def pil_to_array(img: PILImage, channels: int) -> np.ndarray:
    """A loaded PIL image as uint8 ``[H, W]`` (channels 1) or ``[H, W, 3]`` (channels 3)."""
    from PIL import Image

    if img.mode in _SIXTEEN_BIT_MODES:
        # 16-bit grayscale: keep the top byte instead of letting convert() clip at 255.
        wide = np.asarray(img, dtype=np.int64)
        img = Image.fromarray((wide >> 8).clip(0, 255).astype(np.uint8))
    converted = img.convert("L" if channels == 1 else "RGB")
    return np.array(converted, dtype=np.uint8)


def decode_image_bytes(data: bytes, channels: int) -> np.ndarray:
    """Decode encoded image bytes; raises ``OSError``/``ValueError`` from PIL when corrupt."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return pil_to_array(img, channels)


_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_REGULAR_TYPES = (b"0", b"\0", b"7")  # regular file (and the old NUL flag), contiguous file


class TarDamage(ValueError):
    """A tar that cannot be complete; the message says where it breaks, for a one-line error."""


def _tar_number(field: bytes) -> int:
    """A numeric header field: octal text, or GNU base-256 when the top bit is set (large files)."""
    if field and field[0] & 0x80:
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _header_intact(header: bytes) -> bool:
    """The header checksum: the byte sum with the checksum field read as spaces (signed or not,
    as tar writers have used both)."""
    try:
        stored = _tar_number(header[148:156])
    except ValueError:
        return False
    blanked = header[:148] + b" " * 8 + header[156:]
    unsigned = sum(blanked)
    if stored == unsigned:
        return True
    return stored == unsigned - 256 * sum(1 for b in blanked if b > 127)  # the rare signed sum


def _pax_path(records: bytes) -> str | None:
    """The ``path`` record of a pax extended header (records ``b"<len> <key>=<value>\\n"``)."""
    while records:
        length_text = records.split(b" ", 1)[0]
        try:
            length = int(length_text)
        except ValueError:
            return None
        if length <= len(length_text):
            return None
        record, records = records[:length], records[length:]
        keyword, _, value = record[len(length_text) + 1 :].partition(b"=")
        if keyword == b"path":
            return value.rstrip(b"\n").decode("utf-8", errors="replace")
    return None


def tar_member_names(path: ShardPath) -> list[str]:
    """Names of the regular files of a tar, in order, from its headers alone.

    Member data is seeked over, never read (a gzip-compressed tar is decompressed, still
    without decoding an image), so this costs one 512-byte read per member. Along the way it
    checks what a streaming reader cannot tell from a normal end: every header is intact
    (checksum), every member's data lies within the file, and the archive ends with its
    end-of-archive blocks. Raises :class:`TarDamage` saying where the tar breaks, ``OSError``
    when the file cannot be read.

    A tar at a URL is read the same way through fsspec (range reads); one behind a ``pipe:``
    command is streamed once, its data read and dropped instead of seeked over.
    """
    target = path if isinstance(path, str) and is_remote(path) else Path(path)
    with open_shard(target) as (raw, size):
        compressed = starts_with_gzip(raw)
        fh = gzip.GzipFile(fileobj=raw) if compressed else raw
        try:
            return _walk_headers(fh, None if compressed else size)
        except (EOFError, zlib.error, gzip.BadGzipFile) as err:
            raise TarDamage(f"its gzip stream is damaged ({err})") from None


def _walk_headers(fh: IO[bytes] | io.BufferedIOBase, size: int | None) -> list[str]:
    names: list[str] = []
    offset = 0
    long_name: str | None = None  # from a GNU ``L`` or pax ``x`` header, for the next member
    while True:
        header = fh.read(_BLOCK)
        if len(header) < _BLOCK:
            after = f" after member {names[-1]}" if names else ""
            raise TarDamage(f"it ends at byte {offset}{after} without the end-of-archive blocks")
        if header == _ZERO_BLOCK:
            if fh.read(_BLOCK) != _ZERO_BLOCK:
                raise TarDamage(f"its end-of-archive blocks at byte {offset} are incomplete")
            return names
        if not _header_intact(header):
            raise TarDamage(f"the member header at byte {offset} is damaged")
        try:
            member_size = _tar_number(header[124:136])
        except ValueError:
            raise TarDamage(f"the member header at byte {offset} has no valid size") from None
        padded = -(-member_size // _BLOCK) * _BLOCK
        typeflag = header[156:157]
        name = long_name or _header_name(header)
        if size is not None and offset + _BLOCK + padded > size:
            raise TarDamage(f"it is cut short inside member {name} (byte {offset})")
        if typeflag in (b"L", b"x"):
            data = fh.read(padded)[:member_size]
            long_name = (
                data.split(b"\0", 1)[0].decode("utf-8", errors="replace")
                if typeflag == b"L"
                else _pax_path(data)
            ) or long_name
        else:
            if typeflag in _REGULAR_TYPES:
                names.append(name)
            long_name = None
            _skip(fh, padded, name, offset)
        offset += _BLOCK + padded


def _header_name(header: bytes) -> str:
    name = header[0:100].split(b"\0", 1)[0]
    prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
    joined = prefix + b"/" + name if prefix else name
    return joined.decode("utf-8", errors="replace")


def _skip(fh: IO[bytes] | io.BufferedIOBase, count: int, name: str, offset: int) -> None:
    if count == 0:
        return
    if isinstance(fh, gzip.GzipFile) or not fh.seekable():
        # Forward reads only: a short read is where the compressed stream (or the pipe) ends.
        remaining = count
        while remaining:
            chunk = fh.read(min(remaining, 1 << 20))
            if not chunk:
                raise TarDamage(f"it is cut short inside member {name} (byte {offset})")
            remaining -= len(chunk)
    else:
        fh.seek(count, os.SEEK_CUR)


def tar_looks_complete(path: ShardPath) -> bool:
    """True when an uncompressed tar ends with the two zero blocks every complete tar has.

    A tar cut short (a killed copy, a full disk) ends inside a member instead, which the
    streaming readers cannot tell from a normal end. Compressed tars are not checked here
    (gzip reports its own truncation), nor is a ``pipe:`` stream (it cannot seek to its end;
    the reader's count and key check at the end of the shard stands in).
    """
    if isinstance(path, str) and is_pipe(path):
        return True
    target = path if isinstance(path, str) and is_remote(path) else Path(path)
    with open_shard(target) as (fh, known):
        size = int(known or 0)
        head = fh.read(2)
        if head == b"\x1f\x8b":
            return True
        if size < 1024 or size % 512 != 0:
            return False
        fh.seek(size - 1024)
        return fh.read(1024) == bytes(1024)
