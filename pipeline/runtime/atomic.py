"""Atomic file writes and output checks: every file we write goes through here.

A file is written as ``<name>.partial`` beside the target, fsynced, then ``os.replace``d, so a
reader never sees half a checkpoint or half an index, whatever moment a process is killed at.
On any failure the ``.partial`` is removed, and an ``OSError`` a user can cause (disk full,
read-only file system, no permission, a directory where a file belongs) becomes a one-line
:class:`~.errors.UserError` naming the path. :func:`check_output_file` and
:func:`check_output_dir` find the same problems before a stage starts its work.
"""

from __future__ import annotations

import errno
import io
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from .errors import UserError
from .json_text import json_text

PathLike = str | os.PathLike[str]

# Errors of the file system or of the user's paths, not bugs: reported in one line.
_USER_IO_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EFBIG,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.EISDIR,
        errno.ENOTDIR,
        errno.EEXIST,
        errno.ENAMETOOLONG,
        # A folder on the way that refuses new entries (/proc, a vanished mount): never ours,
        # since every writer here creates the folders it writes in.
        errno.ENOENT,
    }
)
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def write_error(err: OSError, path: PathLike) -> UserError | None:
    """The one-line :class:`UserError` for ``err`` raised while writing ``path``; None for an
    error no user can cause (a bug keeps its traceback)."""
    if err.errno not in _USER_IO_ERRNOS:
        return None
    if err.errno in (errno.ENOTDIR, errno.EEXIST):  # EEXIST: mkdir met a file on the way
        reason = f"{err.filename or 'a folder on its path'} is not a directory"
    else:
        reason = os.strerror(err.errno).lower() if err.errno is not None else str(err)
    hint = (
        "; free some space, then run the command again (with --resume if it has one)"
        if err.errno in _FULL
        else ""
    )
    return UserError(f"cannot write {path}: {reason}{hint}")


@contextmanager
def atomic_writer(path: PathLike) -> Iterator[IO[bytes]]:
    """Write ``path`` through a binary file handle; it appears complete or not at all.

    The handle writes ``<name>.partial``; leaving the block without an exception fsyncs it and
    renames it onto ``path``. Any exception removes the ``.partial``; an ``OSError`` a user
    can cause is re-raised as a one-line :class:`UserError` (see :func:`write_error`).
    """
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(partial, target)
    except BaseException as err:
        with suppress(OSError):  # it may not exist, or the file system may refuse even this
            partial.unlink(missing_ok=True)
        user_error = write_error(err, target) if isinstance(err, OSError) else None
        if user_error is not None:
            raise user_error from None
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that the file is either the old one or the new one."""
    with atomic_writer(path) as fh:
        fh.write(data)


def atomic_write_json(path: PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_bytes(path, (json_text(obj, indent=2) + "\n").encode())


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """``torch.save`` through :func:`atomic_write_bytes`."""
    import torch  # here, so modules that only write JSON do not pay for importing torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def append_jsonl(path: PathLike, record: dict[str, Any]) -> None:
    """Append one JSON line (metrics). Appends of one short line are atomic enough on POSIX."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(json_text(record) + "\n")
    except OSError as err:
        user_error = write_error(err, target)
        if user_error is None:
            raise
        raise user_error from None


def check_output_file(path: PathLike) -> None:
    """Before any work: ``path`` can be written as a file.

    It must not be a directory, and the nearest existing folder on its way must be a directory
    this process may create files in (not read-only, not someone else's). Raises
    :class:`UserError` in one line otherwise.
    """
    target = Path(path)
    if target.is_dir():
        raise UserError(f"{target} is a directory; give the path of a file to write")
    _check_can_create_in(target.parent, target)


def check_output_dir(path: PathLike) -> None:
    """Before any work: ``path`` is, or can be created as, a directory we may write files in."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise UserError(f"{target} exists and is not a directory")
    _check_can_create_in(target, target)


def _check_can_create_in(directory: Path, wanted: Path) -> None:
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot write {wanted}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
        reason = "read-only file system" if read_only else "permission denied"
        raise UserError(f"cannot write {wanted}: {existing} is not writable ({reason})")
    # Permission bits do not tell everything (root may "write" /proc, which refuses every new
    # entry): create and remove a probe folder, which leaves nothing behind.
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".civt-pipe-probe-", dir=existing))
    except OSError as err:
        reason = os.strerror(err.errno).lower() if err.errno is not None else str(err)
        raise UserError(f"cannot write {wanted}: {existing} refuses new files ({reason})") from None
