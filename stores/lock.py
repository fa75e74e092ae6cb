"""One writer per store: an atomically created lock file beside the store.

The lock sits beside the store (``.<name>.lock`` in the same directory), not inside it: the
store directory itself is built under another name and renamed into place on creation, and
``--overwrite`` replaces it, so a file inside would vanish while its writer still runs. The
file is created with ``O_CREAT | O_EXCL`` (atomic on local and NFSv3+ file systems) and holds the
writer's pid and host. A lock whose pid no longer lives on this host was left by a killed writer
and is taken over; one from another host cannot be checked and stays in force.

On object storage (a store at an fsspec URL, :mod:`.location`) the lock is an object beside the
store, ``<prefix>/.<name>.lock``, written with a conditional put that fails when the object
exists (S3's ``If-None-Match: *``; other backends check, then write) and read back afterwards, so
a writer that lost a race sees the other's lock. A stale lock is deleted and the put retried;
there is no atomic rename, so two writers on the same host taking over the same stale lock at
the same instant could both proceed — restart one of them.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from .errors import StoreError
from .location import StoreLocation


@dataclass(frozen=True, slots=True)
class LockHolder:
    """Who holds (or held) a store's lock."""

    pid: int
    host: str


def lock_location(store: str | os.PathLike[str]) -> StoreLocation:
    """Where the lock of the store at ``store`` (a path or an fsspec URL) lives."""
    target = StoreLocation(store)
    return target.sibling(f".{target.name}.lock")


def lock_path(store: str | os.PathLike[str]) -> Path:
    """Where the lock of the local store at ``store`` lives."""
    target = Path(store)
    return target.with_name(f".{target.name}.lock")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _read_holder(path: Path | StoreLocation) -> LockHolder | None:
    """The holder a lock file names, or None if it is unreadable (being written, damaged)."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
        return LockHolder(pid=int(data["pid"]), host=str(data["host"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


class WriterLock:
    """The exclusive write lock of one store.

    ``acquire`` raises ``StoreError`` ("<store> is in use by another writer (pid N, host H)")
    while a live writer holds it, and returns the holder of a stale lock it took over (None
    otherwise) so the caller can say so. ``release`` removes the file (only if it is ours).
    """

    def __init__(self, store: str | os.PathLike[str]) -> None:
        self.location = lock_location(store)
        self.store = StoreLocation(store)
        self.path: Path | str = (
            self.location.local if self.location.local is not None else self.location.url
        )
        """The lock file, or the lock object's URL."""
        self.me = LockHolder(pid=os.getpid(), host=socket.gethostname())
        self._held = False

    def acquire(self) -> LockHolder | None:
        """Take the lock; the stale holder taken over, or None. ``StoreError`` if it is held."""
        if self.location.local is not None:
            try:
                self.location.local.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise self._cannot_create(err) from None
        stale: LockHolder | None = None
        for _ in range(2):  # a stale lock is cleared once, then the create is retried
            try:
                self.location.create_file(
                    json.dumps({"pid": self.me.pid, "host": self.me.host}).encode()
                )
            except FileExistsError:
                holder = _read_holder(self.location)
                if holder is None:
                    raise StoreError(
                        f"{self.store} is in use by another writer (lock file {self.path} "
                        "names none; delete it if no dump-logits runs on this store)"
                    ) from None
                if holder.host != self.me.host or _pid_alive(holder.pid):
                    raise StoreError(
                        f"{self.store} is in use by another writer (pid {holder.pid}, host "
                        f"{holder.host})"
                    ) from None
                stale = holder
                self._clear_stale(holder)
                continue
            except OSError as err:  # read-only or full file system, a file where a directory is
                raise self._cannot_create(err) from None
            if not self.location.is_local:
                # Backends without a conditional put check, then write: read back who won.
                holder = _read_holder(self.location)
                if holder != self.me:
                    raise StoreError(
                        f"{self.store} is in use by another writer (its lock {self.path} "
                        "changed while it was taken)"
                    )
            self._held = True
            return stale
        raise StoreError(f"{self.store} is in use by another writer (its lock keeps changing)")

    def _cannot_create(self, err: OSError) -> StoreError:
        return StoreError(f"cannot create the writer lock {self.path}: {err.strerror or err}")

    def _clear_stale(self, holder: LockHolder) -> None:
        if self.location.local is None:
            self.location.delete_file()  # no atomic rename on object storage (module docstring)
            return
        # Rename first, then check that the renamed file is the stale one we read: another
        # process may have cleared it and taken the lock in between, and its lock must stay.
        path = self.location.local
        aside = path.with_name(f"{path.name}.stale-{self.me.pid}")
        try:
            os.replace(path, aside)
        except FileNotFoundError:
            return  # someone else cleared it first; the retry decides
        if _read_holder(aside) != holder:
            os.replace(aside, path)  # a fresh lock: put it back, the retry will refuse
            return
        aside.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock file if this process holds it."""
        if not self._held:
            return
        self._held = False
        if _read_holder(self.location) == self.me:
            self.location.delete_file()
