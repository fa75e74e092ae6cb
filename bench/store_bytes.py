"""Bytes on disk per (view, teacher) of a logit store, and synthetic 1000-class stores to measure.

Only chunk files count (the compressed data); ``zarr.json`` metadata is a fixed few kB per
array that vanishes per view on a real dataset, so it is reported separately.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from civt_pipe.stores.schema import index_dtype

APPLE_REINFORCED_IMAGENET = {"k": 10, "bytes_per_view": 65.0}
"""Apple's dataset reinforcement (Faghri et al. 2023): ~65 B per view of ImageNet, top-10."""
FKD = {"k": 5, "bytes_per_view": 29.0}
"""FKD (Shen & Xing 2022): ~29 B per crop, top-5 soft label."""
METADATA_FILE = "zarr.json"


def raw_bytes_per_view_teacher(k: int, num_classes: int) -> int:
    """Uncompressed bytes of one (view, teacher).

    k float16 log-probabilities, k class ids and one float32 lse.
    """
    return k * 2 + k * index_dtype(num_classes).itemsize + 4


def chunk_bytes(path: Path) -> int:
    """Bytes of every data file under ``path`` (everything but zarr metadata)."""
    if not path.exists():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.name != METADATA_FILE)


def metadata_bytes(path: Path) -> int:
    """Bytes of the zarr metadata files under ``path``."""
    return sum(p.stat().st_size for p in path.rglob(METADATA_FILE) if p.is_file())


def store_bytes_report(store_path: Path) -> dict[str, Any]:
    """Bytes on disk per view of a written store, split into teachers, augmentation and the rest.

    ``per_view_teacher`` is the mean over teachers of (logprobs + indices + lse chunk bytes) /
    (samples × views). ``aug_per_view`` is every ``aug/*`` field's chunk bytes per view;
    ``other_per_view`` covers keys, labels, validity, view labels and replay digests.
    """
    from civt_pipe.stores.logit_store import LogitStore

    store = LogitStore.open(store_path)
    views = store.num_samples * store.num_views
    teachers: dict[str, dict[str, float]] = {}
    for name in store.teacher_names:
        base = store_path / "teachers" / name
        parts = {part: chunk_bytes(base / part) / views for part in ("logprobs", "indices", "lse")}
        teachers[name] = {**parts, "total": sum(parts.values())}
    aug_fields = {f: chunk_bytes(store_path / "aug" / f) / views for f in store.aug_fields}
    other = {
        name: chunk_bytes(store_path / name) / views
        for name in ("keys", "labels", "valid", "view_labels", "digests", "written")
    }
    per_teacher = [t["total"] for t in teachers.values()]
    return {
        "k": store.topk,
        "num_classes": store.num_classes,
        "samples": store.num_samples,
        "views": store.num_views,
        "raw_per_view_teacher": raw_bytes_per_view_teacher(store.topk, store.num_classes),
        "per_view_teacher": sum(per_teacher) / len(per_teacher),
        "teachers": teachers,
        "aug_per_view": sum(aug_fields.values()),
        "aug_fields_per_view": aug_fields,
        "other_per_view": sum(other.values()),
        "metadata_bytes": metadata_bytes(store_path),
        "total_bytes": chunk_bytes(store_path) + metadata_bytes(store_path),
    }


def compare_with_published(per_view_teacher: float, k: int) -> dict[str, Any]:
    """Our bytes per (view, teacher) against the published figure at the same k (if any)."""
    for name, ref in (("apple_reinforced_imagenet", APPLE_REINFORCED_IMAGENET), ("fkd", FKD)):
        if ref["k"] == k:
            ratio = per_view_teacher / ref["bytes_per_view"]
            return {
                "reference": name,
                "reference_bytes_per_view": ref["bytes_per_view"],
                "ratio": ratio,
                "goal": 0.5,
                "met": ratio <= 0.5,
            }
    return {}


def write_synthetic_store(
    path: Path,
    *,
    teacher_logits: dict[str, torch.Tensor],
    k: int,
    num_views: int,
    shard_size: int,
    image_size: int = 224,
    seed: int = 0,
) -> None:
    """A complete store of ``teacher_logits`` (``[n, V, C]`` each) with DeiT-recipe parameters.

    Keys, labels and parameters are what ``dump-logits`` would record for ImageNet-like
    sources (heights 300–500, widths 375–500 px, DeiT augmentation at ``image_size``); digests
    are random 64-bit numbers, as incompressible as real ones.
    """
    from civt_pipe.pipeline.augment.config import preset
    from civt_pipe.pipeline.augment.params import param_fields, sample_block_params
    from civt_pipe.stores.blocks import ShardBlock
    from civt_pipe.stores.logit_store import LogitStore
    from civt_pipe.stores.schema import FieldSpec, StoreSpec, TeacherInfo
    from civt_pipe.stores.topk import TopKLogits

    first = next(iter(teacher_logits.values()))
    n, views, num_classes = (int(s) for s in first.shape)
    if views != num_views:
        raise ValueError(f"logits hold {views} views, expected {num_views}")
    aug = preset("deit", image_size)
    rng = np.random.default_rng(seed)
    shards = [
        (f"syn-{i:06d}.tar", min(shard_size, n - start))
        for i, start in enumerate(range(0, n, shard_size))
    ]
    spec = StoreSpec(
        shards=shards,
        num_views=num_views,
        topk=k,
        num_classes=num_classes,
        teachers=[
            TeacherInfo(name=name, arch="synthetic", checkpoint_sha256="0" * 64, num_classes=C)
            for name, C in ((t, int(v.shape[-1])) for t, v in teacher_logits.items())
        ],
        aug_fields={
            name: FieldSpec(shape=shape, dtype=np.dtype(dtype).name)
            for name, (shape, dtype) in param_fields(aug).items()
        },
        attrs={"synthetic": True},
    )
    store = LogitStore.create(path, spec, overwrite=True)
    start = 0
    for name, count in shards:
        rows = slice(start, start + count)
        keys = [f"syn_{start + i:07d}" for i in range(count)]
        positions = list(range(count))
        hws = [
            (int(h), int(w))
            for h, w in zip(
                rng.integers(300, 501, count), rng.integers(375, 501, count), strict=True
            )
        ]
        per_view = [
            sample_block_params(seed, v, keys, positions, hws, count, aug) for v in range(views)
        ]
        aug_block = {f: np.stack([p[f] for p in per_view], axis=1) for f in per_view[0]}
        labels = first[rows, 0].argmax(-1).numpy().astype(np.int32)
        block = ShardBlock(
            keys=keys,
            labels=labels,
            view_labels=np.repeat(labels[:, None], views, axis=1),
            digests=rng.integers(0, 2**63, (count, views), dtype=np.int64).view(np.uint64),
            aug=aug_block,
            teachers={t: TopKLogits.from_logits(z[rows], k) for t, z in teacher_logits.items()},
        )
        store.write_shard(name, block)
        start += count
    store.finalize()


def truncate_store(src: Path, dst: Path, k: int) -> None:
    """Copy of the store ``src`` keeping each teacher's first ``k`` logits (its top-k).

    Stored rows are sorted descending, so the first ``k`` of a top-k' row (k ≤ k') are exactly
    what ``dump-logits --topk k`` would have written; every other array is copied unchanged.
    """
    from dataclasses import replace

    from civt_pipe.stores.logit_store import LogitStore
    from civt_pipe.stores.topk import TopKLogits

    source = LogitStore.open(src)
    if not 1 <= k <= source.topk:
        raise ValueError(f"k must be between 1 and the store's top-k {source.topk}, got {k}")
    target = LogitStore.create(dst, replace(source.spec, topk=k), overwrite=True)
    for layout in source.shards:
        block = source.read_shard(layout.name)
        block.teachers = {
            name: TopKLogits(
                logprobs=top.logprobs[..., :k], indices=top.indices[..., :k], lse=top.lse
            )
            for name, top in block.teachers.items()
        }
        target.write_shard(layout.name, block)
    target.finalize()
