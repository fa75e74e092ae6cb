"""sha256 of files: read back in blocks (:func:`file_sha256`), or taken while the bytes are
written (:class:`HashingWriter`), which spares a second pass over a large file."""

from __future__ import annotations

import hashlib
import io
import os
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

BLOCK_BYTES = 1 << 20
"""How much :func:`file_sha256` reads at a time."""


def file_sha256(path: str | os.PathLike[str]) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of a file, read in :data:`BLOCK_BYTES` blocks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(BLOCK_BYTES):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


class HashingWriter(io.RawIOBase):
    """A write-only file that passes every byte on to ``target`` and counts and hashes it:
    :attr:`size` and :meth:`hexdigest` are those of what was written through it (the whole
    file when ``target`` was opened empty). ``tell`` is the target's, as ``tarfile`` needs."""

    def __init__(self, target: IO[bytes]) -> None:
        super().__init__()
        self._target = target
        self._digest = hashlib.sha256()
        self.size = 0
        """Bytes written so far."""

    def writable(self) -> bool:
        return True

    def write(self, b: ReadableBuffer, /) -> int:
        view = memoryview(b)
        self._target.write(view)
        self._digest.update(view)
        self.size += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self._target.tell()

    def hexdigest(self) -> str:
        """sha256 hex of the bytes written so far."""
        return self._digest.hexdigest()
