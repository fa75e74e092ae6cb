"""Store format 4: one sharded file per (shard, array), one inner chunk per view.

Counts the files (independent of V), checks the codec chains (crc32c on every inner chunk and on
each file's index), that a shard is written without reading any data file back (no
read-modify-write, so two writers of different shards never share a file), and that damage in a
file is one line naming the array and the view, or the file whose index is damaged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from numcodecs.checksum32 import CRC32C
from store_helpers import SHARDS, make_block, make_spec, write_all

from civt_pipe.stores.errors import StoreDamagedError, StoreVersionError
from civt_pipe.stores.inspect import inspect_store, verify_store
from civt_pipe.stores.integrity import file_key, read_shard_index
from civt_pipe.stores.logit_store import LogitStore
from civt_pipe.stores.schema import VERSION_CHANGES, StoreSpec

FIRST = SHARDS[0][0]
LOGPROBS = "teachers/cnn/logprobs"


def _finalized(path: Path, spec: StoreSpec) -> LogitStore:
    store = LogitStore.create(path, spec)
    write_all(store, spec)
    store.finalize()
    return store


def _data_files(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file() and p.name != "zarr.json"]


@pytest.mark.parametrize("views", [1, 6])
def test_one_file_per_shard_and_array_plus_metadata(tmp_path: Path, views: int) -> None:
    spec = make_spec(views=views)
    path = tmp_path / "s.zarr"
    store = _finalized(path, spec)
    arrays = store.array_specs
    assert len(arrays) == 14  # keys valid labels view_labels digests written, 2 aug, 2 × 3
    files = _data_files(path)
    # Exactly N_shards × N_arrays data files whatever V: each (shard, array) is one file.
    assert len(files) == len(spec.shards) * len(arrays)
    per_array: dict[str, int] = {}
    for f in files:
        array = f.relative_to(path).as_posix().rpartition("/c/")[0]
        per_array[array] = per_array.get(array, 0) + 1
    assert per_array == dict.fromkeys(arrays, len(spec.shards))
    # Metadata: one zarr.json per array and per group (root, aug, teachers, each teacher).
    metadata = sorted(p for p in path.rglob("zarr.json"))
    assert len(metadata) == len(arrays) + 3 + len(spec.teachers)
    report = inspect_store(path)
    assert report["num_files"] == len(files) + len(metadata)


def test_per_view_arrays_are_sharded_with_checksummed_chunks_and_index(tmp_path: Path) -> None:
    spec = make_spec(views=3)
    path = tmp_path / "s.zarr"
    store = LogitStore.create(path, spec)
    for name, array in store.array_specs.items():
        meta = json.loads((path / name / "zarr.json").read_text())
        codecs = meta["codecs"]
        if len(array.shape) == 1:
            assert array.shards is None
            assert codecs[-1]["name"] == "crc32c", name
            continue
        assert array.shards == (64, 3, *array.shape[2:]) and array.chunks[1] == 1, name
        (sharding,) = codecs
        assert sharding["name"] == "sharding_indexed", name
        config = sharding["configuration"]
        assert config["chunk_shape"] == list(array.chunks)
        assert config["codecs"][-1]["name"] == "crc32c", name
        assert [c["name"] for c in config["index_codecs"]] == ["bytes", "crc32c"], name
        assert config["index_location"] == "end"
        assert meta["chunk_grid"]["configuration"]["chunk_shape"] == list(array.shards)


def test_writing_a_shard_merges_nothing_from_an_earlier_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # zarr writes a sharded file by read-modify-write. write_shard deletes the shard's files
    # first, so every such read finds nothing: not on a fresh store, not on a replace, and not
    # after a killed attempt left a file that no longer decodes.
    spec = make_spec()
    path = tmp_path / "s.zarr"
    store = LogitStore.create(path, spec)
    store.read("written")  # warm the metadata
    found: list[str] = []
    original = zarr.storage.LocalStore.get

    async def recording_get(self: Any, key: str, *args: Any, **kw: Any) -> Any:
        value = await original(self, key, *args, **kw)
        if "/c/" in key and not key.startswith("written/") and value is not None:
            found.append(key)
        return value

    monkeypatch.setattr(zarr.storage.LocalStore, "get", recording_get)
    write_all(store, spec)
    store.write_shard(FIRST, make_block(spec, FIRST), replace=True)
    garbage = path / file_key(LOGPROBS, (1, 0, 0))
    garbage.write_bytes(b"left by a killed writer")
    store.write_shard(SHARDS[1][0], make_block(spec, SHARDS[1][0]), replace=True)
    assert found == []
    monkeypatch.undo()
    store.finalize()
    verify_store(path)


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x5A
    path.write_bytes(bytes(data))


def test_a_flipped_byte_names_array_and_view_and_other_views_still_read(
    tmp_path: Path,
) -> None:
    spec = make_spec(views=3)
    path = tmp_path / "s.zarr"
    store = _finalized(path, spec)
    array = store.array_specs[LOGPROBS]
    assert array.shards is not None
    index = read_shard_index("s", store.location, LOGPROBS, array.chunks, array.shards, (0, 0, 0))
    offset, length = (int(v) for v in index[0, 1, 0])
    _flip(path / file_key(LOGPROBS, (0, 0, 0)), offset + length // 2)  # inside view 1's chunk
    reader = LogitStore.open(path)
    with pytest.raises(StoreDamagedError) as err:
        reader.read_view(FIRST, 1)
    assert str(err.value) == (
        f"{path}: view 1, chunk (0, 1, 0) of array {LOGPROBS} is damaged (checksum mismatch); "
        "re-dump the store with civt-pipe dump-logits --overwrite"
    )
    # Each view is checked on its own: the other views of the same file still read.
    want = make_block(spec, FIRST).teachers["cnn"].logprobs
    for view in (0, 2):
        got = reader.read_view(FIRST, view).teachers["cnn"].logprobs
        np.testing.assert_array_equal(got.numpy(), want[:, view].numpy())
    with pytest.raises(StoreDamagedError, match=r"view 1, chunk \(0, 1, 0\) of array"):
        verify_store(path)


def test_a_damaged_index_names_the_file(tmp_path: Path) -> None:
    spec = make_spec()
    path = tmp_path / "s.zarr"
    _finalized(path, spec)
    key = file_key("teachers/inn/lse", (2, 0))
    _flip(path / key, -8)  # inside the index (the file's tail)
    want = (
        f"{path}: the index of file {key} of array teachers/inn/lse is damaged (checksum "
        "mismatch), so no view of its rows can be read; re-dump the store with civt-pipe "
        "dump-logits --overwrite"
    )
    reader = LogitStore.open(path)
    for read in (
        lambda: reader.read_view(SHARDS[2][0], 0),
        lambda: reader.read_shard(SHARDS[2][0]),
    ):
        with pytest.raises(StoreDamagedError) as err:
            read()
        assert str(err.value) == want
    reader.read_view(SHARDS[1][0], 0)  # the other shards' files are untouched


@pytest.mark.parametrize("keep", [0, 20])
def test_a_truncated_file_is_refused_when_the_store_opens(tmp_path: Path, keep: int) -> None:
    # zarr reads an empty sharded file as fill values (zeros): open must refuse it first.
    spec = make_spec()
    path = tmp_path / "s.zarr"
    _finalized(path, spec)
    key = file_key("digests", (1, 0))
    (path / key).write_bytes((path / key).read_bytes()[:keep])
    with pytest.raises(StoreDamagedError) as err:
        LogitStore.open(path)
    assert str(err.value) == (
        f"{path}: file {key} of array digests is truncated ({keep} bytes, shorter than its "
        "36-byte index); re-dump the store with civt-pipe dump-logits --overwrite"
    )


def test_an_inner_chunk_missing_from_its_index_fails_verify(tmp_path: Path) -> None:
    # Something other than civt-pipe rewrote a file without view 1: zarr would read zeros.
    spec = make_spec()
    path = tmp_path / "s.zarr"
    _finalized(path, spec)
    key = file_key("aug/crop", (0, 0, 0))
    data = (path / key).read_bytes()
    size = 16 * spec.num_views + 4
    entries = np.frombuffer(data[-size:-4], dtype="<u8").copy().reshape(spec.num_views, 2)
    entries[1] = 2**64 - 1
    (path / key).write_bytes(data[:-size] + bytes(CRC32C().encode(entries.tobytes())))
    with pytest.raises(StoreDamagedError) as err:
        verify_store(path)
    assert str(err.value) == (
        f"{path}: view 1, inner chunk (0, 1, 0) of file {key} of array aug/crop (shard "
        f"{FIRST}) is missing from the file; re-dump the store with civt-pipe dump-logits "
        "--overwrite"
    )


def test_a_version_3_store_is_refused_with_how_to_convert(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    LogitStore.create(path, make_spec())
    zarr.open_group(str(path), mode="r+").attrs.update({"format_version": 3})
    with pytest.raises(StoreVersionError) as err:
        LogitStore.open(path)
    text = str(err.value)
    assert "older logit store format version 3" in text and VERSION_CHANGES[3] in text
    assert text.endswith("re-dump it with civt-pipe dump-logits --overwrite")
