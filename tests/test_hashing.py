"""runtime/hashing.py: a file hashed while written equals the same file read back."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

from civt_pipe.pipeline.runtime.hashing import HashingWriter, file_sha256


def test_file_sha256_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    data = bytes(range(256)) * 5000  # more than one read block
    path.write_bytes(data)
    assert file_sha256(path) == (len(data), hashlib.sha256(data).hexdigest())


def test_hashing_writer_sees_exactly_the_tar_written(tmp_path: Path) -> None:
    path = tmp_path / "a.tar"
    plain = io.BytesIO()
    with open(path, "wb") as fh, HashingWriter(fh) as hashed:
        for target in (hashed, plain):
            with tarfile.open(fileobj=target, mode="w", format=tarfile.PAX_FORMAT) as tar:
                info = tarfile.TarInfo("k.cls")
                info.size = 3
                tar.addfile(info, io.BytesIO(b"123"))
    assert path.read_bytes() == plain.getvalue()
    assert (hashed.size, hashed.hexdigest()) == file_sha256(path)
    assert hashed.size == path.stat().st_size > 0
