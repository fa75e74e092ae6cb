"""Image decoding and tar checks shared by the shard writer, the scanner and the reader.

Every image of the project is decoded by :func:`decode_image_bytes` (or, many at once,
:func:`decode_batch`): ``make-shards``' check, ``dump-logits``, ``train-teacher``,
``train-student`` (online and store replay) and ``evaluate``. Three decoders:

- ``torchvision`` (the default): :func:`torchvision.io.decode_image` for JPEG, PNG, GIF and
  WebP; formats it lacks (BMP, TIFF, PPM/PGM, ...) go to PIL.
- ``pil``: PIL for everything (what every store made before the decoder was recorded used).
- ``nvjpeg``: JPEGs decoded in batches on the GPU (``decode_jpeg(list, device="cuda")``), the
  rest as ``torchvision``. Its pixels differ from libjpeg's, so a store records its decoder.

Measured (torchvision 0.29, Pillow 13): ``torchvision`` and ``pil`` give
the same pixels for PNG (gray, RGB, RGBA, palette, 16-bit), baseline and progressive JPEG at
4:4:4, 4:2:2 and 4:2:0, CMYK JPEG, WebP and GIF, once grayscale is made the same way (PIL's
luma formula, not libjpeg's Y channel) and 16-bit samples keep their top byte.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import warnings
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal, cast, get_args

import numpy as np

from ..runtime.errors import UserError
from .remote import ShardPath, is_pipe, is_remote, open_shard, starts_with_gzip

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image as PILImage

IMAGE_SUFFIXES = ("png", "jpg", "jpeg", "webp", "ppm", "pgm", "bmp", "tif", "tiff", "gif")
"""Member extensions that count as a sample's image, in order of preference."""

Decoder = Literal["torchvision", "pil", "nvjpeg"]
"""Who turns an image's bytes into pixels (see the module docstring)."""
DECODERS: tuple[Decoder, ...] = get_args(Decoder)
DECODER_CHOICES: tuple[str, ...] = ("auto", *DECODERS)
"""``--decoder`` values: ``auto`` is the store's decoder when replaying one, else torchvision."""
LEGACY_DECODER: Decoder = "pil"
"""The decoder of a store that records none (made before the attribute existed)."""
DECODER_HELP = (
    "Image decoder: auto (a store's recorded decoder, else torchvision), torchvision, pil, "
    "or nvjpeg (JPEGs in batches on a CUDA GPU, --workers 0)."
)
NVJPEG_BATCH = 32
"""Images the reader hands the GPU decoder at once."""

OnError = Literal["fail", "skip"]
"""What a command does with an image that does not decode: stop with an error naming it, or
leave it out, record it and go on (``make-shards``, ``dump-logits``, the shard reader)."""
ON_ERROR_MODES: tuple[OnError, ...] = get_args(OnError)


def resolve_decoder(
    asked: str,
    *,
    device_type: str,
    workers: int,
    store: str | None = None,
    recorded: str | None = None,
) -> Decoder:
    """The decoder a run uses: ``asked`` (a :data:`DECODER_CHOICES` value) made concrete.

    Replaying a store (``store`` and its ``recorded`` decoder given; None when the store records
    none, i.e. :data:`LEGACY_DECODER`): ``auto`` is the recorded decoder and any other choice
    must equal it, because a replayed view must be bit-identical to the view the teachers saw.
    Otherwise ``auto`` is ``torchvision``. ``nvjpeg`` needs a CUDA device and decodes in the
    main process (``--workers 0``). Every refusal is one :class:`UserError` line.
    """
    if asked not in DECODER_CHOICES:
        raise UserError(f"--decoder must be one of {', '.join(DECODER_CHOICES)}, got {asked!r}")
    if store is not None:
        made_with = recorded if recorded is not None else LEGACY_DECODER
        if made_with not in DECODERS:
            raise UserError(f"store {store} records an unknown decoder {made_with!r}")
        if asked not in ("auto", made_with):
            raise UserError(
                f"store {store} was dumped with the {made_with} decoder, but --decoder is "
                f"{asked}: replayed views would differ; use --decoder auto (or {made_with})"
            )
        chosen = cast(Decoder, made_with)
    else:
        chosen = "torchvision" if asked == "auto" else cast(Decoder, asked)
    if chosen == "nvjpeg" and device_type != "cuda":
        source = f"store {store} was dumped with" if store is not None else "--decoder"
        raise UserError(
            f"{source} nvjpeg (GPU JPEG decoding, pixels unlike the CPU decoders'), which needs "
            "a CUDA device (--device cuda)"
        )
    if chosen == "nvjpeg" and workers > 0:
        raise UserError("the nvjpeg decoder runs in the main process: use --workers 0 with it")
    return chosen


_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I"})
# PIL's "L" from RGB (ITU-R 601-2 luma in 16-bit fixed point); the weights sum to 65536, so a
# gray pixel repeated to RGB maps back to itself.
_LUMA = (19595, 38470, 7471)


@cache
def _luma_weights() -> torch.Tensor:
    """:data:`_LUMA` as an int32 ``[3, 1, 1]`` CPU tensor, built once (torch is imported
    lazily: config modules import this one and must not pull torch in)."""
    import torch

    return torch.tensor(_LUMA, dtype=torch.int32).view(3, 1, 1)


def pil_to_array(img: PILImage, channels: int) -> np.ndarray:
    """A loaded PIL image as uint8 ``[H, W]`` (channels 1) or ``[H, W, 3]`` (channels 3)."""
    from PIL import Image

    if img.mode in _SIXTEEN_BIT_MODES:
        # 16-bit grayscale: keep the top byte instead of letting convert() clip at 255.
        wide = np.asarray(img, dtype=np.int64)
        img = Image.fromarray((wide >> 8).clip(0, 255).astype(np.uint8))
    converted = img.convert("L" if channels == 1 else "RGB")
    return np.array(converted, dtype=np.uint8)


def array_to_tensor(array: np.ndarray) -> torch.Tensor:
    """uint8 ``[H, W]`` or ``[H, W, C]`` as a contiguous uint8 ``[C, H, W]`` tensor."""
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.ndim == 2:
        return tensor.unsqueeze(0)
    return tensor.permute(2, 0, 1).contiguous()


def tensor_to_array(image: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`array_to_tensor`: ``[1, H, W]`` -> ``[H, W]``, else ``[H, W, 3]``."""
    array = image.permute(1, 2, 0).numpy()
    return np.ascontiguousarray(array[:, :, 0] if array.shape[2] == 1 else array)


def is_jpeg(data: bytes) -> bool:
    """True for JPEG (and MPO, a JPEG with extra frames) bytes."""
    return data[:3] == b"\xff\xd8\xff"


def image_kind(data: bytes) -> str | None:
    """``"jpg"`` or ``"png"`` from the bytes' signature; None for any other format."""
    if is_jpeg(data):
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    return None


def torchvision_reads(data: bytes) -> bool:
    """Whether :func:`torchvision.io.decode_image` decodes these bytes' format (JPEG, PNG, GIF,
    WebP); everything else is PIL's. AVIF and HEIC need optional torchvision plugins: PIL's too."""
    if image_kind(data) is not None or data[:6] in (b"GIF87a", b"GIF89a"):
        return True
    return data[:4] == b"RIFF" and data[8:12] == b"WEBP"


def _as_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """A decoded ``[C, H, W]`` RGB tensor (``[N, C, H, W]`` frames for a GIF) as uint8 with
    ``channels`` channels, converted the way :func:`pil_to_array` converts."""
    import torch

    if image.ndim == 4:
        image = image[0]  # an animated GIF: its first frame, as PIL shows it
    if image.dtype != torch.uint8:
        image = (image.to(torch.int32) >> 8).to(torch.uint8)  # 16-bit PNG: the top byte
    if channels == 3:
        return image.contiguous()
    weights = _luma_weights()
    if image.device.type != "cpu":
        weights = weights.to(image.device)
    luma = ((image.to(torch.int32) * weights).sum(0, keepdim=True) + 0x8000) >> 16
    return luma.to(torch.uint8)


# torchvision's errors start with the C++ function and source line ("decode_jpeg,
# /__w/vision/.../decode_jpeg.cpp:171, Image is incomplete or truncated").
_SOURCE_PREFIX = re.compile(r"^\S+, \S+:\d+, ")


@contextmanager
def _torchvision_io() -> Iterator[None]:
    """Silence torchvision 0.29's deprecation of its image codecs (in favour of TorchCodec,
    not a dependency here), which fires on every call; a decode error becomes a ``ValueError``
    with the reason only."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="The image decoding and encoding capabilities of TorchVision"
        )
        try:
            yield
        except RuntimeError as err:
            reason = _SOURCE_PREFIX.sub("", " ".join(str(err).split()))
            raise ValueError(reason or type(err).__name__) from None


def _decode_pil(data: bytes, channels: int) -> torch.Tensor:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return array_to_tensor(pil_to_array(img, channels))


def _decode_torchvision(data: bytes, channels: int) -> torch.Tensor:
    import torch
    from torchvision.io import ImageReadMode, decode_image

    # RGB mode for both channel counts: libjpeg's own grayscale is the Y channel, not PIL's luma.
    encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    with _torchvision_io():
        decoded = decode_image(encoded, mode=ImageReadMode.RGB)
    return _as_channels(decoded, channels)


def _decode_nvjpeg(
    datas: Sequence[bytes], channels: int, device: torch.device, keep_on_device: bool = False
) -> list[torch.Tensor]:
    """JPEGs decoded together on ``device`` by nvjpeg, returned on the CPU (or left on the
    device with ``keep_on_device``, for views rendered there)."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    encoded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    with _torchvision_io():
        decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    return [
        _as_channels(t, channels) if keep_on_device else _as_channels(t, channels).cpu()
        for t in decoded
    ]


def decode_image_bytes(
    data: bytes, channels: int, decoder: Decoder = "torchvision"
) -> torch.Tensor:
    """Decode one image's bytes to uint8 ``[C, H, W]`` (``channels`` 1 or 3) with ``decoder``.

    Raises ``ValueError`` (torchvision, PIL) or ``OSError`` (PIL) for corrupt data; callers
    name the file.
    """
    if decoder == "nvjpeg":
        return decode_batch([data], channels, decoder)[0]
    if decoder == "pil" or not torchvision_reads(data):
        return _decode_pil(data, channels)
    return _decode_torchvision(data, channels)


def decode_image_file(path: Path, channels: int) -> tuple[bytes, np.ndarray]:
    """A file's bytes and its pixels, uint8 ``[H, W]`` (channels 1) or ``[H, W, 3]``, decoded
    by :func:`decode_image_bytes`; ``ValueError(reason)`` (one line) when the file cannot be
    read or decoded, for the caller to name the file."""
    from PIL import Image

    try:
        data = path.read_bytes()
        return data, tensor_to_array(decode_image_bytes(data, channels))
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as err:
        raise ValueError(" ".join(str(err).split()) or type(err).__name__) from None


def decode_batch(
    datas: Sequence[bytes],
    channels: int,
    decoder: Decoder,
    device: torch.device | None = None,
    *,
    keep_on_device: bool = False,
) -> list[torch.Tensor]:
    """Decode many images' bytes, in order, to uint8 ``[C, H, W]`` CPU tensors.

    With ``nvjpeg`` on a CUDA ``device`` (default ``cuda``) the JPEGs go to the GPU as one
    batch (and stay there with ``keep_on_device``: no image returns to the host) and everything
    else is decoded as ``torchvision`` does; any other decoder or device decodes one image at a
    time on the CPU. A corrupt image fails the whole call.
    """
    import torch

    target = device if device is not None else torch.device("cuda")
    if decoder != "nvjpeg" or target.type != "cuda":
        cpu: Decoder = "torchvision" if decoder == "nvjpeg" else decoder
        return [decode_image_bytes(d, channels, cpu) for d in datas]
    out: list[torch.Tensor | None] = [None] * len(datas)
    jpegs = [i for i, d in enumerate(datas) if is_jpeg(d)]
    if jpegs:
        gpu = _decode_nvjpeg([datas[i] for i in jpegs], channels, target, keep_on_device)
        for i, image in zip(jpegs, gpu, strict=True):
            out[i] = image
    for i, d in enumerate(datas):
        if out[i] is None:
            out[i] = decode_image_bytes(d, channels, "torchvision")
    return [t for t in out if t is not None]


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
