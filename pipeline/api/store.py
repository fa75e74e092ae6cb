"""``civt_pipe.open_store``: a read-only description of a ``dump-logits`` store.

What ``inspect-store`` reports about a store's making (teachers, V, k, classes, the augmentation
recipe, seed, decoder), read from its attributes; :meth:`Store.report` computes the full
``inspect-store --json`` report (per-teacher accuracy, entropy, bytes) when it is wanted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...stores.inspect import inspect_store
from ...stores.logit_store import LogitStore
from ...stores.schema import TeacherInfo
from ..augment.config import AugmentConfig
from ..data.imageio import LEGACY_DECODER
from ..replay.binding import DUMP_ATTRIBUTES, dump_attributes


@dataclass(frozen=True)
class Store:
    """A logit store as ``dump-logits`` made it: nothing here writes to it.

    Pass it (or its path) to :class:`~.views.ReplayedViews` to train from it.
    """

    path: str
    """The store's directory or fsspec URL."""
    num_classes: int
    """C."""
    class_names: tuple[str, ...]
    """The classes in label order (the shards' index order)."""
    num_views: int
    """V: stored views per sample; epoch ``e`` replays view ``e mod V``."""
    topk: int
    """k: stored top-k entries per sample, view and teacher."""
    teachers: tuple[TeacherInfo, ...]
    """In stored order: ``name``, ``arch``, ``checkpoint_sha256``, ``num_classes``."""
    augment: AugmentConfig
    """The augmentation recipe the views were drawn with (crop, flip, RandAugment, erasing,
    mixup/cutmix); :class:`~.views.ReplayedViews` replays it bit for bit."""
    seed: int
    """The seed of the views and of the data order."""
    image_size: int
    """Side of the square views, in pixels."""
    channels: int
    """Image channels (1 for gray, 3 for RGB)."""
    decoder: str
    """The image decoder the views were rendered with (a replay must use the same)."""
    dataset_fingerprint: str
    """Fingerprint of the shards the store was made from (names, counts, keys)."""
    num_shards: int
    num_samples: int
    """Samples over all shards (skipped ones included)."""
    complete: bool
    """Every shard written: the store can be trained from."""

    @property
    def teacher_names(self) -> list[str]:
        """The teachers' names in stored order."""
        return [t.name for t in self.teachers]

    def report(self, *, verify: bool = False) -> dict[str, Any]:
        """What ``civt-pipe inspect-store --json`` prints (``verify``: ``--verify``, every
        invariant checked first); reads every written shard, so it takes a while on big
        stores."""
        return inspect_store(self.path, verify=verify)


def open_store(path_or_url: str | Path) -> Store:
    """Open the ``dump-logits`` store at ``path_or_url`` (a directory, ``s3://``, ``gs://`` or
    ``file://`` URL) and describe it.

    Raises:
        StoreError: nothing readable there, another format version, or a damaged store.
        UserError: a zarr store that ``dump-logits`` did not make.
    """
    store = LogitStore.open(path_or_url)
    dump = dump_attributes(store, (*DUMP_ATTRIBUTES, "class_names", "channels"))
    augment = AugmentConfig.from_dict(dict(dump["augment"]))
    return Store(
        path=str(store.path),
        num_classes=store.num_classes,
        class_names=tuple(str(n) for n in dump["class_names"]),
        num_views=store.num_views,
        topk=store.topk,
        teachers=tuple(store.teachers),
        augment=augment,
        seed=int(dump["seed"]),
        image_size=augment.image_size,
        channels=int(dump["channels"]),
        decoder=str(dump.get("decoder") or LEGACY_DECODER),
        dataset_fingerprint=str(dump["dataset_fingerprint"]),
        num_shards=len(store.shards),
        num_samples=store.num_samples,
        complete=store.is_complete(),
    )
