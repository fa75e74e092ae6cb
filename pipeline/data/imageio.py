"""Image decoding and tar checks shared by the shard writer, the scanner and the reader."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

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


def tar_looks_complete(path: str | os.PathLike[str]) -> bool:
    """True when an uncompressed tar ends with the two zero blocks every complete tar has.

    A tar cut short (a killed copy, a full disk) ends inside a member instead, which the
    streaming readers cannot tell from a normal end. Compressed tars are not checked here
    (gzip reports its own truncation).
    """
    target = Path(path)
    size = target.stat().st_size
    with open(target, "rb") as fh:
        head = fh.read(2)
        if head == b"\x1f\x8b":
            return True
        if size < 1024 or size % 512 != 0:
            return False
        fh.seek(size - 1024)
        return fh.read(1024) == bytes(1024)
