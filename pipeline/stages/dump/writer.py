"""Finished shards written on a background thread while the teachers run on the next ones.

Writing a shard (padding, compression, crc32c, one file per array) is host work the forward
passes need not wait for. One writer thread takes the shards in the order they finished, one
at a time — the same ``write_shard`` calls with the same blocks as writing them inline, so the
store's bytes are the same — and at most one shard waits behind the one being written, so
memory stays bounded by two finished shards. An error of the writer (a full disk, a truncated
tar found by ``to_block``) is raised in the main thread at the next submission or at
:meth:`ShardWriter.wait`.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType

from ....stores.logit_store import LogitStore
from .teachers import ShardAccumulator


class ShardWriter:
    """``with ShardWriter(store) as writer: writer.submit(name, acc) ...; writer.wait()``."""

    def __init__(self, store: LogitStore) -> None:
        self.store = store
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="civt-shard-writer")
        self._pending: Future[None] | None = None

    def _write(self, name: str, acc: ShardAccumulator) -> None:
        self.store.write_shard(name, acc.to_block())

    def submit(self, name: str, acc: ShardAccumulator) -> None:
        """Write shard ``name`` in the background, after the shard before it is written."""
        self.wait()
        self._pending = self._pool.submit(self._write, name, acc)

    def wait(self) -> None:
        """Block until every submitted shard is written; re-raise the writer's error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        # On an error in the main thread the shard being written is finished (its flag is set
        # last, so a kill mid-write leaves it missing either way) before the caller unlocks;
        # without one, the last shard's own error is raised here.
        try:
            if kind is None:
                self.wait()
        finally:
            self._pool.shutdown(wait=True)
