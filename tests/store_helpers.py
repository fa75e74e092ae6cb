"""Tiny deterministic logit stores for the store tests (imported by tests/test_store_*.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from civt_pipe.stores.logit_store import LogitStore, ShardBlock
from civt_pipe.stores.schema import FieldSpec, StoreSpec, TeacherInfo
from civt_pipe.stores.topk import TopKLogits

SHARDS = [("train-000000.tar", 5), ("train-000001.tar", 3), ("train-000002.tar", 7)]


def make_spec(
    *,
    shards: list[tuple[str, int]] | None = None,
    views: int = 2,
    k: int = 3,
    classes: int = 10,
    teachers: tuple[str, ...] = ("cnn", "inn"),
    chunk_rows: int | None = None,
) -> StoreSpec:
    """A spec with two augmentation fields (a box and a flag) and free attributes."""
    return StoreSpec(
        shards=list(shards or SHARDS),
        num_views=views,
        topk=k,
        num_classes=classes,
        teachers=[
            TeacherInfo(t, f"arch-{t}", f"{i:064x}", classes) for i, t in enumerate(teachers)
        ],
        aug_fields={"crop": FieldSpec((4,), "int32"), "flip": FieldSpec((), "uint8")},
        attrs={"dataset_fingerprint": "f" * 64, "seed": 7},
        chunk_rows=chunk_rows,
    )


def make_block(spec: StoreSpec, name: str) -> ShardBlock:
    """The block of shard ``name``, a pure function of its position in the spec."""
    index = [n for n, _ in spec.shards].index(name)
    count = dict(spec.shards)[name]
    gen = torch.Generator().manual_seed(1000 + index)
    views = spec.num_views
    rng = np.random.default_rng(index)
    return ShardBlock(
        keys=[f"s{index}k{i}" for i in range(count)],
        labels=rng.integers(0, spec.num_classes, size=count),
        view_labels=rng.integers(0, spec.num_classes, size=(count, views)),
        digests=rng.integers(1, 2**62, size=(count, views)).astype(np.uint64),
        aug={
            "crop": rng.integers(0, 32, size=(count, views, 4)).astype(np.int32),
            "flip": rng.integers(0, 2, size=(count, views)).astype(np.uint8),
        },
        teachers={
            t.name: TopKLogits.from_logits(
                3 * torch.randn(count, views, spec.num_classes, generator=gen), spec.topk
            )
            for t in spec.teachers
        },
    )


def write_all(store: LogitStore, spec: StoreSpec, names: list[str] | None = None) -> None:
    """Write the given shards (default: all) with their deterministic blocks."""
    for name in names if names is not None else [n for n, _ in spec.shards]:
        store.write_shard(name, make_block(spec, name))


def tree_bytes(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (relative name → bytes)."""
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def write_shards_worker(path: str, names: list[str]) -> None:
    """Entry point of a spawned writer process: open r+ and write ``names``."""
    torch.set_num_threads(1)
    store = LogitStore.open(path, "r+")
    write_all(store, make_spec(), names)
