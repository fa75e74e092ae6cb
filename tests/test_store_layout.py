"""Logit store layout, round trip, open/create errors and one-chunk view reads."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr
from store_helpers import SHARDS, make_block, make_spec, write_all
from zarr.abc.store import RangeByteRequest, SuffixByteRequest

from civt_pipe.stores.errors import StoreError
from civt_pipe.stores.integrity import file_key, read_shard_index
from civt_pipe.stores.logit_store import LogitStore
from civt_pipe.stores.schema import FORMAT_VERSION, FieldSpec, StoreSpec, TeacherInfo
from civt_pipe.stores.topk import TopKLogits, dense_target


def test_default_layout_puts_each_shard_in_one_chunk() -> None:
    spec = make_spec()
    assert spec.resolved_chunk_rows == 64
    assert [s.row_offset for s in spec.layout()] == [0, 64, 128]
    assert spec.num_rows == 192


def test_given_chunk_rows_pads_every_shard_to_a_chunk_boundary() -> None:
    spec = make_spec(chunk_rows=4)
    assert [s.row_offset for s in spec.layout()] == [0, 8, 12]
    assert spec.num_rows == 20


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 11}, "top-k 11"),
        ({"shards": [("a.tar", 2), ("a.tar", 3)]}, "listed twice"),
        ({"shards": [("a.tar", 0)]}, "no samples"),
        ({"views": 0}, "views"),
        ({"teachers": ("cnn", "cnn")}, "unique"),
        ({"teachers": ("bad/name",)}, "bad/name"),
    ],
)
def test_spec_rejects_bad_input_with_a_clear_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(StoreError, match=message):
        make_spec(**kwargs)


def test_spec_rejects_teacher_with_other_class_count() -> None:
    with pytest.raises(StoreError, match="has 5 classes but the data has 10"):
        StoreSpec(
            shards=SHARDS,
            num_views=1,
            topk=2,
            num_classes=10,
            teachers=[TeacherInfo("cnn", "resnet18", "0", 5)],
        )


def test_field_spec_rejects_non_numeric_dtype() -> None:
    with pytest.raises(StoreError, match="bool, integer or float"):
        FieldSpec((2,), "U4")


def test_round_trip_of_every_array(tmp_path: Path) -> None:
    spec = make_spec()
    store = LogitStore.create(tmp_path / "s.zarr", spec)
    write_all(store, spec)
    reader = LogitStore.open(tmp_path / "s.zarr")
    assert reader.spec == dataclasses.replace(spec, chunk_rows=64)
    for name, count in spec.shards:
        want = make_block(spec, name)
        got = reader.read_shard(name)
        assert got.keys == want.keys
        np.testing.assert_array_equal(got.labels, want.labels)
        np.testing.assert_array_equal(got.view_labels, want.view_labels)
        np.testing.assert_array_equal(got.digests, want.digests)
        assert got.valid is not None and got.valid.all() and got.valid.shape == (count,)
        for f in ("crop", "flip"):
            np.testing.assert_array_equal(got.aug[f], want.aug[f])
        for t, top in want.teachers.items():
            assert torch.equal(got.teachers[t].logprobs, top.logprobs)
            assert torch.equal(got.teachers[t].indices, top.indices)
            assert torch.equal(got.teachers[t].lse, top.lse)
        for view in range(spec.num_views):
            v = reader.read_view(name, view)
            assert v.keys == want.keys
            np.testing.assert_array_equal(v.digests, want.digests[:, view])
            np.testing.assert_array_equal(v.aug["crop"], want.aug["crop"][:, view])
            assert torch.equal(v.teachers["inn"].logprobs, want.teachers["inn"].logprobs[:, view])
            assert torch.equal(v.teachers["inn"].lse, want.teachers["inn"].lse[:, view])


def test_stored_dtypes_and_int32_ids_for_many_classes(tmp_path: Path) -> None:
    small = LogitStore.create(tmp_path / "a.zarr", make_spec())
    assert small.array("teachers/cnn/logprobs").dtype == np.float16
    assert small.array("teachers/cnn/indices").dtype == np.int16
    assert small.array("teachers/cnn/lse").dtype == np.float32
    big = LogitStore.create(tmp_path / "b.zarr", make_spec(classes=40000, shards=[("a.tar", 2)]))
    assert big.array("teachers/cnn/indices").dtype == np.int32


def test_create_refuses_existing_path_unless_overwrite(tmp_path: Path) -> None:
    spec = make_spec()
    path = tmp_path / "s.zarr"
    write_all(LogitStore.create(path, spec), spec, [SHARDS[0][0]])
    with pytest.raises(StoreError, match="already exists"):
        LogitStore.create(path, spec)
    fresh = LogitStore.create(path, spec, overwrite=True)
    assert fresh.missing_shards() == [n for n, _ in SHARDS]


def test_overwrite_refuses_a_directory_that_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.txt").write_text("keep me")
    with pytest.raises(StoreError, match="not a zarr store"):
        LogitStore.create(tmp_path / "data", make_spec(), overwrite=True)
    assert (tmp_path / "data" / "precious.txt").exists()


def test_open_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no logit store at"):
        LogitStore.open(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="not a civt-pipe logit store"):
        LogitStore.open(tmp_path / "plain")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w").attrs.update({"x": 1})
    with pytest.raises(StoreError, match="not a civt-pipe logit store"):
        LogitStore.open(tmp_path / "other.zarr")


@pytest.mark.parametrize(
    ("version", "message"),
    [
        (
            FORMAT_VERSION + 1,
            f"format version {FORMAT_VERSION + 1}; this civt-pipe reads up to version "
            f"{FORMAT_VERSION}",
        ),
        (
            FORMAT_VERSION - 1,
            f"older logit store format version {FORMAT_VERSION - 1}; this civt-pipe reads "
            f"version {FORMAT_VERSION} only",
        ),
        (0, "unknown logit store format version 0"),
        ("one", "unknown logit store format version"),
    ],
)
def test_open_refuses_other_or_unknown_versions(tmp_path: Path, version: Any, message: str) -> None:
    path = tmp_path / "s.zarr"
    LogitStore.create(path, make_spec())
    zarr.open_group(str(path), mode="r+").attrs.update({"format_version": version})
    with pytest.raises(StoreError, match=message):
        LogitStore.open(path)


def test_huge_teacher_logits_round_trip_with_the_right_top_class(tmp_path: Path) -> None:
    # An unstable teacher with logits ~1e6: float16 raw logits saturated at 65504 and gave the
    # top class ~0 probability. Log-probabilities are scale-free.
    spec = make_spec(shards=[("big.tar", 4)], views=1, k=3)
    gen = torch.Generator().manual_seed(11)
    logits = 1.0e6 + 1.0e5 * torch.randn(4, 1, 10, generator=gen)
    logits[..., 0] = 1.4e6  # a clear winner: probability ≈ 1
    block = make_block(spec, "big.tar")
    block.teachers = {t: TopKLogits.from_logits(logits, 3) for t in block.teachers}
    path = tmp_path / "s.zarr"
    store = LogitStore.create(path, spec)
    store.write_shard("big.tar", block)
    store.finalize()
    top = LogitStore.open(path).read_shard("big.tar").teachers["cnn"]
    assert (top.indices[..., 0] == 0).all()
    dense = dense_target(top.logprobs, top.indices, 10).double()
    assert torch.allclose(dense[..., 0], torch.ones(4, 1, dtype=torch.float64), atol=1e-6)
    probs = torch.softmax(logits.double(), -1)
    kl = (probs * (probs.clamp(min=1e-300).log() - dense.clamp(min=1e-300).log())).sum(-1)
    assert torch.isfinite(kl).all() and float(kl.max()) < 1e-3
    assert torch.allclose(top.values[..., 0], logits[..., 0], rtol=1e-6)


def test_write_rules(tmp_path: Path) -> None:
    spec = make_spec()
    path = tmp_path / "s.zarr"
    store = LogitStore.create(path, spec)
    first = SHARDS[0][0]
    store.write_shard(first, make_block(spec, first))
    with pytest.raises(StoreError, match="already written"):
        store.write_shard(first, make_block(spec, first))
    store.write_shard(first, make_block(spec, first), replace=True)
    with pytest.raises(StoreError, match="read-only"):
        LogitStore.open(path).write_shard(first, make_block(spec, first))
    with pytest.raises(StoreError, match="not in logit store"):
        store.write_shard("nope.tar", make_block(spec, first))
    with pytest.raises(ValueError, match="shape"):
        bad = make_block(spec, SHARDS[1][0])
        bad.digests = bad.digests[:, :1]
        store.write_shard(SHARDS[1][0], bad)
    assert store.missing_shards() == [SHARDS[1][0], SHARDS[2][0]]
    with pytest.raises(StoreError, match=r"shards not written: train-000001.tar, train-000002"):
        store.finalize()
    write_all(store, spec, [SHARDS[1][0], SHARDS[2][0]])
    store.finalize({"note": "done"})
    with pytest.raises(StoreError, match="finalized"):
        store.write_shard(first, make_block(spec, first), replace=True)


def test_finalize_records_digests_top1_skips_and_consolidates(tmp_path: Path) -> None:
    spec = make_spec()
    path = tmp_path / "s.zarr"
    store = LogitStore.create(path, spec)
    skipped_block = make_block(spec, SHARDS[1][0])
    skipped_block.valid = np.array([True, False, True])
    write_all(store, spec, [SHARDS[0][0], SHARDS[2][0]])
    store.write_shard(SHARDS[1][0], skipped_block)
    store.finalize({"note": "done"})
    attrs = LogitStore.open(path).attrs
    assert attrs["complete"] is True
    assert attrs["skipped_keys"] == ["s1k1"] and attrs["num_skipped"] == 1
    assert attrs["attrs"] == {"dataset_fingerprint": "f" * 64, "seed": 7, "note": "done"}
    keys = make_block(spec, SHARDS[2][0]).keys
    assert attrs["shards"][2]["key_digest"] == hashlib.sha256("\n".join(keys).encode()).hexdigest()
    hits = total = 0
    for name, _ in spec.shards:
        block = make_block(spec, name)
        valid = (
            np.ones(len(block.keys), bool)
            if block.keys != skipped_block.keys
            else skipped_block.valid
        )
        top1 = block.teachers["cnn"].indices[..., 0].numpy()[valid]
        hits += int((top1 == block.view_labels[valid]).sum())
        total += top1.size
    assert attrs["teachers"][0]["top1"] == pytest.approx(hits / total)
    assert "consolidated_metadata" in json.loads((path / "zarr.json").read_text())
    # Skipped rows hold zeros in every per-view array.
    got = LogitStore.open(path).read_shard(SHARDS[1][0])
    assert not got.valid[1] and got.digests[1].sum() == 0
    assert float(got.teachers["cnn"].lse[1].abs().sum()) == 0.0


def test_check_compatible_names_the_first_difference(tmp_path: Path) -> None:
    store = LogitStore.create(tmp_path / "s.zarr", make_spec())
    store.check_compatible(make_spec())
    with pytest.raises(StoreError, match="different views"):
        store.check_compatible(make_spec(views=3))


def test_store_pickles_by_reopening(tmp_path: Path) -> None:
    spec = make_spec()
    store = LogitStore.create(tmp_path / "s.zarr", spec)
    write_all(store, spec, [SHARDS[0][0]])
    clone = pickle.loads(pickle.dumps(LogitStore.open(tmp_path / "s.zarr")))
    assert clone.missing_shards() == [SHARDS[1][0], SHARDS[2][0]]


def test_read_view_is_one_chunk_read_per_array(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec()
    path = tmp_path / "s.zarr"
    write_all(LogitStore.create(path, spec), spec)
    store = LogitStore.open(path)
    store.read_view(SHARDS[1][0], 0)  # warm the array metadata cache
    reads: list[tuple[str, Any]] = []
    original = zarr.storage.LocalStore.get

    async def counting_get(
        self: zarr.storage.LocalStore, key: str, prototype: Any, byte_range: Any = None
    ) -> Any:
        reads.append((key, byte_range))
        return await original(self, key, prototype, byte_range)

    monkeypatch.setattr(zarr.storage.LocalStore, "get", counting_get)
    store.read_view(SHARDS[1][0], 1)
    by_array: dict[str, list[tuple[str, Any]]] = {}
    for key, byte_range in reads:
        if "/c/" in key:
            by_array.setdefault(key.split("/c/")[0], []).append((key, byte_range))
    per_row = {"keys", "valid", "labels"}
    per_view = {"view_labels", "digests", "aug/crop", "aug/flip"}
    for t in ("cnn", "inn"):
        per_view |= {f"teachers/{t}/logprobs", f"teachers/{t}/indices", f"teachers/{t}/lse"}
    assert set(by_array) == per_row | per_view
    for name in per_row:  # one whole chunk file: shard 1's rows
        assert by_array[name] == [(f"{name}/c/1", None)]
    specs = store.array_specs
    for name in per_view:
        # Shard 1's file of the array (row block 1), read twice: its index (the tail), then
        # exactly view 1's inner chunk, the byte range the index gives for it.
        file = (1,) + (0,) * (len(specs[name].shape) - 1)
        key = file_key(name, file)
        (index_key, tail), (chunk_key, chunk) = by_array[name]
        assert index_key == chunk_key == key
        assert isinstance(tail, SuffixByteRequest) and isinstance(chunk, RangeByteRequest)
        chunks, shards = specs[name].chunks, specs[name].shards
        assert shards is not None
        index = read_shard_index("s", store.location, name, chunks, shards, file)
        offset, length = index[(0, 1, *(0,) * (len(file) - 2))]
        assert (chunk.start, chunk.end) == (offset, offset + length)


def test_plain_zarr_reads_the_store_as_documented(tmp_path: Path) -> None:
    spec = make_spec()
    path = tmp_path / "s.zarr"
    store = LogitStore.create(path, spec)
    write_all(store, spec)
    store.finalize()
    group = zarr.open_group(str(path), mode="r")
    shard = group.attrs["shards"][2]
    rows = slice(shard["row_offset"], shard["row_offset"] + shard["count"])
    logprobs = group["teachers/inn/logprobs"][rows, 1]
    lse = group["teachers/inn/lse"][rows, 1]
    want = make_block(spec, shard["name"]).teachers["inn"]
    np.testing.assert_array_equal(logprobs, want.logprobs[:, 1].numpy())
    probs = np.exp(logprobs.astype(np.float32))  # exact top-k probabilities
    assert (probs.sum(-1) <= 1.0).all()
    # Raw logits are logprobs + lse.
    np.testing.assert_allclose(
        logprobs.astype(np.float32) + lse[:, None], want.values[:, 1].numpy()
    )
    assert group["keys"][rows].tolist()[0] == "s2k0"
