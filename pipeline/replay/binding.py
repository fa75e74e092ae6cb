"""A training run's data bound to its source of views and targets, checked before any step.

Store mode (:func:`bind_store`): a finished ``dump-logits`` store must match the shards (names,
counts, keys, class count) and fixes the seed, the augmentation and the number of views.
Online mode (:func:`bind_online`): live teachers, views drawn fresh from ``(seed, view, key)``.
Both give a :class:`DataBinding` that the stream, the targets and the resume check read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...stores.logit_store import LogitStore
from ..augment.config import AugmentConfig, preset
from ..augment.render_device import resolve_render_device
from ..data.imageio import Decoder, resolve_decoder
from ..data.planning import ShardRows, shard_rows_for
from ..runtime.errors import UserError
from .online_teachers import load_online_teachers
from .segments import ViewSource


@dataclass
class DataBinding:
    """The training shards bound to their source of views and targets: a store or live teachers.

    Everything here is resolved and checked before the first step; a resumed run must resolve
    the same facts (``targets_identity``, seed, views, augmentation).
    """

    shards: list[ShardRows]
    aug: AugmentConfig
    seed: int
    num_views: int
    num_classes: int
    class_names: list[str]
    channels: int
    teacher_names: list[str]
    teacher_archs: dict[str, str]
    """Each teacher's registry architecture (the store's record, or the live teacher's)."""
    mean: list[float]
    std: list[float]
    store: LogitStore | None
    """Store mode: the opened, checked store (the replay reads it; no path to reopen)."""
    store_fingerprint: str | None
    targets_identity: dict[str, Any] = field(default_factory=dict)
    """What fixes the teachers' targets (checkpoint digests, k): a resume must not change it."""
    online: dict[str, nn.Module] = field(default_factory=dict)
    topk: int | None = None
    """Store mode: how many of the stored top-k entries the targets use (None: all k)."""
    decoder: Decoder = "torchvision"
    """The image decoder (resolved): in store mode the one the store was dumped with."""
    render_device: str = "cpu"
    """Where views are rendered (resolved, ``cpu`` or ``cuda:N``): in store mode on the device
    type the store's views were rendered on."""

    def view_source(self, verify: str = "sample") -> ViewSource:
        """Where this binding's training views come from: the store's replayed views and top-k
        (of the bound teachers and k), or fresh views in online mode; ``verify`` is
        ``--verify-replay``."""
        return ViewSource(
            aug=self.aug,
            seed=self.seed,
            num_classes=self.num_classes,
            channels=self.channels,
            store=self.store,
            verify=verify,
            teachers=tuple(self.teacher_names) if self.store is not None else None,
            topk=self.topk,
            decoder=self.decoder,
            render_device=self.render_device,
        )


DUMP_ATTRIBUTES = ("dataset_fingerprint", "seed", "augment")
"""What dump-logits records in every store and a replay cannot do without."""


def dump_attributes(store: LogitStore, keys: Sequence[str] = DUMP_ATTRIBUTES) -> dict[str, Any]:
    """The free attributes dump-logits recorded in ``store``; a store without one of ``keys``
    is one :class:`UserError` line."""
    dump = store.user_attrs
    for key in keys:
        if key not in dump:
            raise UserError(
                f"store {store.path} lacks the {key!r} attribute; was it made by dump-logits?"
            )
    return dump


def bind_store(
    store_path: str | Path,
    data: str,
    shard_set: Any,
    *,
    seed: int | None = None,
    image_size: int | None = None,
    views: int | None = None,
    topk: int | None = None,
    teachers: Sequence[str] = (),
    decoder: str = "auto",
    device_type: str = "cpu",
    workers: int = 0,
    render_device: str = "auto",
) -> DataBinding:
    """Open a finished ``dump-logits`` store and check it matches the shards ``data`` names.

    Every mismatch (incomplete store, other shards or keys, another seed or view size, another
    class count) is a one-line :class:`UserError`, raised before any training or evaluation.
    ``seed``/``image_size`` are what the user asked for, if anything.

    ``views``, ``topk`` and ``teachers`` bind a subset of the store (``--store-views``,
    ``--store-topk``, ``--store-teacher``): its first ``views`` views, the first ``topk`` of
    every stored top-k, and those teachers in the store's order. None / empty = all of it.

    ``decoder`` (``--decoder``) must be ``auto`` or the store's recorded decoder (``pil`` for a
    store that records none): :func:`~..data.imageio.resolve_decoder`, on ``device_type`` with
    ``workers`` DataLoader processes. ``render_device`` (``--render-device``) likewise must be
    ``auto`` or the device type the store records (``cpu`` for a store that records none):
    :func:`~..augment.render_device.resolve_render_device`.
    """

    seed_asked = seed
    store = LogitStore.open(store_path)
    dump = dump_attributes(store)  # what dump-logits recorded: fingerprint, seed, augment...
    if not store.is_complete():
        missing = list(store.missing_shards())
        raise UserError(
            f"store {store_path} is incomplete ({len(missing)} shard(s) missing, e.g. "
            f"{missing[0] if missing else '?'}); finish it with dump-logits first"
        )
    theirs = [(s.name, s.count) for s in store.shards]
    mine = [(s.name, s.num_samples) for s in shard_set.index.shards]
    if theirs != mine:
        diff = next(
            (
                f"store has {a} where the data has {b}"
                for a, b in zip(theirs, mine, strict=False)
                if a != b
            ),
            f"store lists {len(theirs)} shards, the data {len(mine)}",
        )
        raise UserError(f"store {store_path} was built from other shards than {data}: {diff}")
    if dump["dataset_fingerprint"] != shard_set.fingerprint():
        raise UserError(
            f"store {store_path} was built from other shards than {data}: the keys differ "
            "(dataset fingerprint mismatch)"
        )
    seed = int(dump["seed"])
    if seed_asked is not None and seed_asked != seed:
        raise UserError(
            f"store {store_path} was built with seed {seed}, but --seed is {seed_asked}"
        )
    aug = AugmentConfig.from_dict(dict(dump["augment"]))
    if image_size is not None and image_size != aug.image_size:
        raise UserError(
            f"store {store_path} holds {aug.image_size}px views, but --image-size is {image_size}"
        )
    index = shard_set.index
    if store.num_classes != index.num_classes:
        raise UserError(
            f"store {store_path} has {store.num_classes} classes, the data {index.num_classes}"
        )
    if views is not None and not 1 <= views <= store.num_views:
        raise UserError(
            f"--store-views must be between 1 and {store.num_views} (the views of store "
            f"{store_path}), got {views}"
        )
    if topk is not None and not 1 <= topk <= store.topk:
        raise UserError(
            f"--store-topk must be between 1 and {store.topk} (the k of store {store_path}), "
            f"got {topk}"
        )
    stored = [t.name for t in store.teachers]
    unknown = [name for name in teachers if name not in stored]
    if unknown:
        raise UserError(
            f"--store-teacher {unknown[0]!r} is not a teacher of store {store_path}; its "
            f"teachers are {', '.join(stored)}"
        )
    chosen = [t for t in store.teachers if not teachers or t.name in teachers]
    resolved = resolve_decoder(
        decoder,
        device_type=device_type,
        workers=workers,
        store=str(store_path),
        recorded=dump.get("decoder"),
    )
    render_on = resolve_render_device(
        render_device,
        torch.device(device_type),
        workers=workers,
        store=str(store_path),
        recorded=dump.get("render_device"),
    )
    names = [t.name for t in chosen]
    # Which rows have a view is one small bool array; nothing else of the store is read here.
    valid_all = store.read("valid").astype(bool)
    rows = []
    for layout, path in zip(store.shards, shard_set.paths, strict=True):
        mask = valid_all[layout.row_offset : layout.row_offset + layout.count]
        valid = np.flatnonzero(mask).astype(np.int64)
        rows.append(ShardRows(name=layout.name, path=str(path), count=layout.count, valid=valid))
    return DataBinding(
        shards=rows,
        aug=aug,
        seed=seed,
        num_views=store.num_views if views is None else views,
        num_classes=index.num_classes,
        class_names=list(index.class_names),
        channels=index.channels,
        teacher_names=names,
        teacher_archs={t.name: t.arch for t in chosen},
        mean=list(index.mean),
        std=list(index.std),
        store=store,
        store_fingerprint=str(dump["dataset_fingerprint"]),
        targets_identity={
            "topk": store.topk if topk is None else topk,
            "teachers": {t.name: t.checkpoint_sha256 for t in chosen},
        },
        topk=topk,
        decoder=resolved,
        render_device=str(render_on),
    )


def bind_online(
    teacher_specs: Sequence[str],
    shard_set: Any,
    device: torch.device,
    *,
    aug: str = "auto",
    image_size: int | None = None,
    seed: int | None = None,
    views: int = 1,
    decoder: str = "auto",
    workers: int = 0,
    render_device: str = "auto",
) -> DataBinding:
    """Bind the shards to live teachers (online mode): fresh views from ``(seed, view, key)``,
    decoded by ``decoder`` (:func:`~..data.imageio.resolve_decoder`; ``auto``: torchvision),
    rendered where ``render_device`` says (:func:`~..augment.render_device.resolve_render_device`).
    """
    resolved = resolve_decoder(decoder, device_type=device.type, workers=workers)
    render_on = resolve_render_device(render_device, device, workers=workers)
    index = shard_set.index
    loaded = load_online_teachers(
        teacher_specs, device, num_classes=index.num_classes, in_chans=index.channels
    )
    teachers = loaded.models
    size = image_size or loaded.image_size
    augment = preset(aug, size)
    return DataBinding(
        shards=shard_rows_for(shard_set.paths, [s.num_samples for s in index.shards]),
        aug=augment,
        seed=0 if seed is None else seed,
        num_views=views,
        num_classes=index.num_classes,
        class_names=list(index.class_names),
        channels=index.channels,
        teacher_names=list(teachers),
        teacher_archs=dict(loaded.archs),
        mean=list(index.mean),
        std=list(index.std),
        store=None,
        store_fingerprint=None,
        targets_identity={
            "topk": index.num_classes,
            "teachers": loaded.checkpoint_sha256,
        },
        online=teachers,
        decoder=resolved,
        render_device=str(render_on),
    )
