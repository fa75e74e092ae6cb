"""Shards that are not files on this machine: fsspec URLs and webdataset ``pipe:`` commands.

A shard set at a URL has the layout of a local one: the tars and the ``index.json`` that
``make-shards`` writes beside them (``s3://bucket/train`` reads ``s3://bucket/train/index.json``;
``s3://bucket/train/train-{000000..000003}.tar`` the index of ``s3://bucket/train``). Tars and
index are read through fsspec (``s3://``, ``gs://``, ``http(s)://``...; credentials and endpoint
from the environment, see :mod:`civt_pipe.stores.location`), with range reads where a check only
needs the headers.

``pipe:CMD`` (webdataset's spelling) runs ``CMD`` in a shell and reads the tar from its standard
output, e.g. ``pipe:aws s3 cp s3://bucket/train/train-{000000..000003}.tar -``. A shard's name is
the basename of the command's last word ending in ``.tar`` (or ``.tar.gz``/``.tgz``), and the
index is read by the same command with that word's basename replaced by ``index.json``. A pipe
cannot seek: the completeness check streams each tar once (headers only, nothing decoded).
"""

from __future__ import annotations

import io
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from ...stores.location import StoreLocation, is_url
from ..runtime.errors import UserError

PIPE = "pipe:"
"""Prefix of a webdataset pipe spec."""

ShardPath = Path | str
"""Where a tar is: a local path, or a URL / ``pipe:`` command (text)."""

_TAR_WORD = re.compile(r"[^\s'\"]+\.(?:tar|tar\.gz|tgz)(?=$|[\s'\"])")


def is_pipe(spec: str | os.PathLike[str]) -> bool:
    """True for a ``pipe:`` command."""
    return isinstance(spec, str) and spec.startswith(PIPE)


def is_remote(spec: str | os.PathLike[str]) -> bool:
    """True when ``spec`` is read through fsspec or a pipe rather than from a local path."""
    return is_pipe(spec) or is_url(spec)


def _pipe_tar_word(command: str) -> re.Match[str]:
    found = list(_TAR_WORD.finditer(command))
    if not found:
        raise UserError(f"{command}: a pipe: shard command must name its .tar (e.g. ... x.tar -)")
    return found[-1]


def shard_name(path: ShardPath) -> str:
    """The basename a shard is known by in the index and the store."""
    if isinstance(path, Path):
        return path.name
    if is_pipe(path):
        return _pipe_tar_word(path).group(0).rsplit("/", 1)[-1]
    return path.rstrip("/").rsplit("/", 1)[-1]


def index_source(first_shard: str) -> str:
    """Where the index of the set holding ``first_shard`` (a URL or pipe command) is read."""
    if is_pipe(first_shard):
        word = _pipe_tar_word(first_shard)
        folder = word.group(0).rsplit("/", 1)[0] + "/" if "/" in word.group(0) else ""
        return first_shard[: word.start()] + folder + "index.json" + first_shard[word.end() :]
    return first_shard.rsplit("/", 1)[0] + "/index.json"


def read_bytes(source: str) -> bytes:
    """All bytes of a URL or of a pipe command's output (``FileNotFoundError`` when there is no
    such object; any other failure a one-line user error naming it)."""
    with open_shard(source) as (stream, _):
        return stream.read()


def exists(source: str) -> bool:
    """Whether a URL names an object (a pipe command is taken to exist until it runs)."""
    if is_pipe(source):
        return True
    return StoreLocation(source).is_file()


@contextmanager
def open_shard(path: ShardPath) -> Iterator[tuple[IO[bytes], int | None]]:
    """``(binary stream, size in bytes or None)`` of a tar (or any file) wherever it is.

    Local files and fsspec URLs are seekable and sized; a pipe is a forward-only stream of
    unknown size whose command must exit 0 (else ``UserError`` with its exit status). A URL that
    cannot be reached is a ``StoreError`` line; a missing one ``FileNotFoundError``.
    """
    if isinstance(path, Path) or not is_remote(path):
        with open(path, "rb") as fh:
            yield fh, os.fstat(fh.fileno()).st_size
        return
    if is_pipe(path):
        command = path[len(PIPE) :]
        # A shell, as webdataset runs it: the command is the user's own pipeline.
        proc = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        try:
            yield proc.stdout, None
        except BaseException:  # the reader failed or stopped early: the command is not needed
            proc.kill()
            proc.stdout.close()
            proc.wait()
            raise
        proc.stdout.read()  # the tar's trailing padding: the command must not die of SIGPIPE
        proc.stdout.close()
        status = proc.wait()
        if status != 0:
            raise UserError(f"{command}: the pipe command exited with status {status}")
        return
    location = StoreLocation(path)
    size = location.size()
    with location.open_read() as remote:
        yield remote, size


def starts_with_gzip(stream: IO[bytes]) -> bool:
    """Whether a stream holds gzip data, without consuming it (peek on a pipe, seek otherwise)."""
    if stream.seekable():
        head = stream.read(2)
        stream.seek(0)
        return head == b"\x1f\x8b"
    if isinstance(stream, io.BufferedReader):
        return stream.peek(2)[:2] == b"\x1f\x8b"
    return False
