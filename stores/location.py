"""Where a store lives: a local directory, or an fsspec URL (``s3://``, ``gs://``, ``file://``...).

One :class:`StoreLocation` answers every file-system question the store code asks — does it
exist, is it a zarr group, which chunk files are there, how many bytes, remove it, write a small
object only if absent — the same way for both. A local path (or ``file://`` URL) is a
:class:`~pathlib.Path` and behaves exactly as a path always did; anything else goes through the
fsspec file system of the URL's scheme, and zarr reads and writes it through
``zarr.storage.FsspecStore``.

Credentials and endpoints come from the environment, as the backend reads them: for S3 the
``AWS_*`` variables or ``~/.aws`` (``AWS_ENDPOINT_URL`` for an S3-compatible server such as MinIO);
any fsspec option also as ``FSSPEC_<PROTOCOL>_<OPTION>`` (e.g. ``FSSPEC_S3_ENDPOINT_URL``).
A failure to reach the storage is a one-line :class:`~.errors.StoreError`, never a traceback.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from .errors import StoreError, StoreUnreachableError

_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")

# The fsspec backend package of the schemes users meet most, and the extra that installs it.
_BACKENDS = {
    "s3": "pip install 'civt-pipe[s3]'",
    "s3a": "pip install 'civt-pipe[s3]'",
    "gs": "pip install gcsfs",
    "gcs": "pip install gcsfs",
    "az": "pip install adlfs",
    "abfs": "pip install adlfs",
}


def url_scheme(target: str | os.PathLike[str]) -> str | None:
    """The scheme of a URL (``"s3"``), or None for a local path (``file://`` counts as local)."""
    if not isinstance(target, str):
        return None
    match = _URL.match(target)
    if match is None or match.group(1).lower() == "file":
        return None
    return match.group(1).lower()


def is_url(target: str | os.PathLike[str]) -> bool:
    """True when ``target`` names remote storage (a URL other than ``file://``)."""
    return url_scheme(target) is not None


def local_path(target: str | os.PathLike[str]) -> Path:
    """A local target as a path (``file:///x`` → ``/x``)."""
    text = os.fspath(target)
    return Path(text[len("file://") :] if text.lower().startswith("file://") else text)


def filesystem(scheme: str) -> Any:
    """The fsspec file system of ``scheme``; ``StoreError`` naming what to install when its
    backend is missing, or that the scheme is unknown."""
    import fsspec  # type: ignore[import-untyped]

    try:
        return fsspec.filesystem(scheme)
    except ImportError:
        hint = _BACKENDS.get(scheme, f"install the fsspec backend of {scheme}://")
        raise StoreError(
            f"{scheme}:// needs an fsspec backend that is not installed: {hint}"
        ) from None
    except ValueError:
        raise StoreError(
            f"unsupported storage scheme {scheme}://: not an fsspec protocol "
            "(use a local path, file://, s3://, gs://...)"
        ) from None


@contextmanager
def reaching(url: str) -> Iterator[None]:
    """Turn any failure of a remote call into one ``StoreError`` line naming ``url``.

    ``FileNotFoundError`` and ``FileExistsError`` pass through: callers ask for them. Backends
    raise their own types (botocore's connection and credential errors are not ``OSError``), so
    everything else is caught.
    """
    try:
        yield
    except (FileNotFoundError, FileExistsError, StoreError):
        raise
    except Exception as err:  # any backend failure: unreachable, forbidden, no credentials...
        text = (" ".join(str(err).split()) or type(err).__name__)[:200]
        raise StoreUnreachableError(f"cannot reach {url}: {text}", text) from None


_BACKEND_PACKAGES = frozenset({"botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "adlfs"})


def unreachable(url: str, err: BaseException) -> StoreUnreachableError | None:
    """``cannot reach URL: REASON`` when ``err`` (raised while reading remote data) is the
    connection or the backend failing rather than the data being damaged; None otherwise."""
    seen: BaseException | None = err
    while seen is not None:
        package = type(seen).__module__.split(".", 1)[0]
        connection = isinstance(seen, (ConnectionError, TimeoutError))
        if connection or package in _BACKEND_PACKAGES:
            text = (" ".join(str(seen).split()) or type(seen).__name__)[:200]
            return StoreUnreachableError(f"cannot reach {url}: {text}", text)
        seen = seen.__cause__ or seen.__context__
    return None


@contextmanager
def writing(url: str, then: str) -> Iterator[None]:
    """Turn any failure of a remote write into one ``StoreError`` line: ``cannot write URL:
    REASON; THEN`` (``then`` says how the command carries on, e.g. that a rerun resumes).

    The connection may go at any moment of a long write (a dump's shards, its finalization),
    not only at the first contact that :func:`reaching` guards; programming errors keep
    their traceback.
    """
    try:
        yield
    except StoreUnreachableError as err:  # a file operation on the way (reaching) lost it
        raise StoreError(f"cannot write {url}: {err.reason}; {then}") from None
    except (StoreError, TypeError, AttributeError, NameError, AssertionError):
        raise
    except Exception as err:  # botocore, aiohttp, OSError...: whatever the backend raises
        text = (" ".join(str(err).split()) or type(err).__name__)[:200]
        raise StoreError(f"cannot write {url}: {text}; {then}") from None


class StoreLocation:
    """A store's place: ``local`` (a :class:`~pathlib.Path`) or ``url`` on an fsspec file system.

    ``str(location)`` is how messages name it: the path, or the URL as given.
    """

    def __init__(self, target: str | os.PathLike[str]) -> None:
        scheme = url_scheme(target)
        self.scheme = scheme
        self.local: Path | None = None if scheme is not None else local_path(target)
        self.url = os.fspath(target).rstrip("/") if scheme is not None else ""
        self._fs: Any = None

    @property
    def is_local(self) -> bool:
        """True for a path on this machine."""
        return self.local is not None

    def __str__(self) -> str:
        return str(self.local) if self.local is not None else self.url

    def __repr__(self) -> str:
        return f"StoreLocation({str(self)!r})"

    @property
    def name(self) -> str:
        """The last component (``s.zarr``)."""
        return self.local.name if self.local is not None else self.url.rsplit("/", 1)[-1]

    @property
    def fs(self) -> Any:
        """The fsspec file system of a URL (created on first use)."""
        if self._fs is None:
            assert self.scheme is not None, "a local location has no fsspec file system"
            self._fs = filesystem(self.scheme)
        return self._fs

    @property
    def _key(self) -> str:
        """The URL without its scheme, as the fsspec file system addresses it."""
        return str(self.fs._strip_protocol(self.url))

    def child(self, member: str) -> StoreLocation:
        """``member`` (``"a/b"``) inside this location."""
        if not member:
            return self
        if self.local is not None:
            return StoreLocation(self.local / member)
        return StoreLocation(f"{self.url}/{member}")

    def sibling(self, name: str) -> StoreLocation:
        """``name`` beside this location, in the same folder or prefix."""
        if self.local is not None:
            return StoreLocation(self.local.with_name(name))
        return StoreLocation(f"{self.url.rsplit('/', 1)[0]}/{name}")

    # ------------------------------------------------------------------ questions
    def exists(self) -> bool:
        """Anything at this place: a file, a directory, or (remote) any object under it."""
        if self.local is not None:
            return self.local.exists()
        with reaching(self.url):
            self.fs.invalidate_cache()
            return bool(self.fs.exists(self._key))

    def is_file(self) -> bool:
        """A single file or object (not a folder or prefix)."""
        if self.local is not None:
            return self.local.is_file()
        with reaching(self.url):
            self.fs.invalidate_cache()
            return bool(self.fs.isfile(self._key))

    def is_empty(self) -> bool:
        """Nothing under this place (an empty directory, or a prefix without objects)."""
        if self.local is not None:
            return self.local.is_dir() and not any(self.local.iterdir())
        return not self.exists()

    def is_zarr_group(self) -> bool:
        """A folder with a ``zarr.json`` at its root."""
        if self.local is not None:
            return self.local.is_dir() and (self.local / "zarr.json").is_file()
        return self.child("zarr.json").is_file()

    def files(self) -> dict[str, int]:
        """Every file under this place: path relative to it (``/``-separated) → size in bytes."""
        if self.local is not None:
            root = self.local
            return {
                p.relative_to(root).as_posix(): p.stat().st_size
                for p in root.rglob("*")
                if p.is_file()
            }
        with reaching(self.url):
            self.fs.invalidate_cache()
            found = self.fs.find(self._key, detail=True)
        prefix = self._key.rstrip("/") + "/"
        return {
            k[len(prefix) :]: int(v.get("size") or 0)
            for k, v in found.items()
            if k.startswith(prefix) and v.get("type", "file") == "file"
        }

    def size(self) -> int:
        """Bytes of a file; ``FileNotFoundError`` when there is none."""
        if self.local is not None:
            return self.local.stat().st_size
        with reaching(self.url):
            return int(self.fs.size(self._key))

    def open_read(self) -> IO[bytes]:
        """A seekable binary reader of a file (range reads on object storage)."""
        if self.local is not None:
            return open(self.local, "rb")
        with reaching(self.url):
            return self.fs.open(self._key, "rb")  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ changes
    def remove(self) -> None:
        """Delete everything at this place (a directory tree, or every object under a prefix)."""
        if self.local is not None:
            import shutil

            shutil.rmtree(self.local)
            return
        with reaching(self.url):
            self.fs.rm(self._key, recursive=True)
            self.fs.invalidate_cache()

    def read_bytes(self) -> bytes:
        """The content of a file; ``FileNotFoundError`` when there is none."""
        if self.local is not None:
            return self.local.read_bytes()
        with reaching(self.url):
            self.fs.invalidate_cache()
            return bytes(self.fs.cat_file(self._key))

    def create_file(self, data: bytes) -> None:
        """Write a new file; ``FileExistsError`` when one is there already.

        Atomic where the storage supports it: ``O_EXCL`` locally, a conditional put
        (``If-None-Match: *``) on S3. Other fsspec backends check, then write.
        """
        if self.local is not None:
            fd = os.open(self.local, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            return
        with reaching(self.url):
            self.fs.pipe_file(self._key, data, mode="create")
            self.fs.invalidate_cache()

    def delete_file(self) -> None:
        """Remove one file if it is there."""
        if self.local is not None:
            self.local.unlink(missing_ok=True)
            return
        with reaching(self.url):
            with suppress(FileNotFoundError):
                self.fs.rm_file(self._key)
            self.fs.invalidate_cache()

    # ------------------------------------------------------------------ zarr
    def zarr_store(self, *, read_only: bool) -> Any:
        """What ``zarr.open_group(store=...)`` takes: the path as text, or an ``FsspecStore``."""
        if self.local is not None:
            return str(self.local)
        from zarr.storage import FsspecStore

        filesystem(str(self.scheme))  # a missing backend or unknown scheme: one line, here
        with reaching(self.url):
            return FsspecStore.from_url(self.url, read_only=read_only)
