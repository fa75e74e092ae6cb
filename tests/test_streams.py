"""The one stream: batches independent of the worker count, exact resume, passes, clean errors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from toy_shards import make_toy_shards

from civt_pipe.pipeline.augment.config import crop_flip, preset
from civt_pipe.pipeline.data.index import ShardIndex, ShardInfo
from civt_pipe.pipeline.data.make_shards import MakeShardsConfig, make_shards
from civt_pipe.pipeline.data.planning import ShardRows, plan_training, shard_rows_for
from civt_pipe.pipeline.data.reader import iter_shard
from civt_pipe.pipeline.data.shard_set import ShardSet, resolve_shards
from civt_pipe.pipeline.data.streams import default_image_size, eval_batches
from civt_pipe.pipeline.models.checkpoint import load_checkpoint
from civt_pipe.pipeline.replay.segments import ViewSource, iter_view_batches
from civt_pipe.pipeline.runtime.errors import UserError
from civt_pipe.pipeline.stages.teacher.config import TeacherTrainConfig
from civt_pipe.pipeline.stages.teacher.run import train_teacher


@pytest.fixture(scope="module")
def digit_shards(tmp_path_factory: pytest.TempPathFactory) -> ShardSet:
    """Three 24-sample shards of the built-in digits (test split)."""
    root = tmp_path_factory.mktemp("digits")
    make_shards(
        MakeShardsConfig(source="digits", out_dir=root / "all", split="test", shard_size=24)
    )
    index = ShardIndex.load(root / "all")
    small = root / "small"
    small.mkdir()
    names = [s.name for s in index.shards[:3]]
    for name in names:
        (small / name).write_bytes((root / "all" / name).read_bytes())
    index.subset(names).save(small)
    return resolve_shards(str(small))


def _rows(shard_set: ShardSet) -> list[ShardRows]:
    return shard_rows_for(shard_set.paths, [s.num_samples for s in shard_set.index.shards])


def _batches(
    shard_set: ShardSet, *, mixing: bool, workers: int, start_step: int = 0, epoch: int = 1
) -> list[torch.Tensor]:
    """Every batch of one epoch flattened to one tensor (images, labels, targets)."""
    rows = _rows(shard_set)
    # Mixing: the student's online recipe (view = epoch mod V); unmixed: train-teacher's.
    aug = preset("small", 16) if mixing else crop_flip(16)
    source = ViewSource(aug=aug, seed=5, num_classes=10, channels=1)
    plan = plan_training(
        rows, seed=5, epoch=epoch, rank=0, world_size=1, batch_size=8, shuffle_buffer=20
    )
    return [
        torch.cat([b.images.flatten(1), b.labels[:, None].float(), b.label_targets], dim=1)
        for b in iter_view_batches(
            source, rows, plan, view=epoch, start_step=start_step, workers=workers
        )
    ]


@pytest.mark.parametrize("mixing", [True, False], ids=["student", "teacher"])
def test_batches_do_not_depend_on_worker_count(digit_shards: ShardSet, mixing: bool) -> None:
    serial = _batches(digit_shards, mixing=mixing, workers=0)
    parallel = _batches(digit_shards, mixing=mixing, workers=2)
    assert len(serial) == 72 // 8
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel, strict=True))


def test_without_workers_the_blocks_render_ahead_on_a_thread(digit_shards: ShardSet) -> None:
    """--workers 0 renders the next blocks on the read-ahead thread while the caller trains
    (the batches above are equal to a worker process's)."""
    import threading

    rows = _rows(digit_shards)
    source = ViewSource(aug=crop_flip(16), seed=5, num_classes=10, channels=1)
    plan = plan_training(
        rows, seed=5, epoch=1, rank=0, world_size=1, batch_size=8, shuffle_buffer=20
    )
    batches = iter_view_batches(source, rows, plan, view=1, workers=0)
    next(batches)
    assert "civt-read-ahead" in {t.name for t in threading.enumerate()}
    assert len(list(batches)) == 72 // 8 - 1
    assert "civt-read-ahead" not in {t.name for t in threading.enumerate()}


@pytest.mark.parametrize("mixing", [True, False], ids=["student", "teacher"])
def test_resuming_mid_epoch_yields_the_remaining_batches_exactly(
    digit_shards: ShardSet, mixing: bool
) -> None:
    full = _batches(digit_shards, mixing=mixing, workers=0)
    rest = _batches(digit_shards, mixing=mixing, workers=1, start_step=4)
    assert len(rest) == len(full) - 4
    assert all(torch.equal(a, b) for a, b in zip(full[4:], rest, strict=True))


def test_epochs_shuffle_differently(digit_shards: ShardSet) -> None:
    a = torch.cat(_batches(digit_shards, mixing=False, workers=0, epoch=0))
    b = torch.cat(_batches(digit_shards, mixing=False, workers=0, epoch=1))
    assert not torch.equal(a[:, -11], b[:, -11])  # the label column: another order


def test_train_teacher_weights_do_not_depend_on_workers(tmp_path: Path) -> None:
    data = make_toy_shards(tmp_path, "train", per_class=8)

    def weights(workers: int) -> dict[str, torch.Tensor]:
        out = tmp_path / f"w{workers}.pt"
        cfg = TeacherTrainConfig(
            arch="cnn-nano",
            data=str(data),
            out=out,
            epochs=1,
            batch_size=8,
            workers=workers,
            device="cpu",
            threads=1,
        )
        train_teacher(cfg)
        return load_checkpoint(out)["state_dict"]

    zero, two = weights(0), weights(2)
    for name, value in zero.items():
        torch.testing.assert_close(two[name], value, rtol=0, atol=0)


def test_a_user_error_in_a_worker_is_one_clean_user_error(tmp_path: Path) -> None:
    rows = [
        ShardRows(
            name="gone.tar",
            path=str(tmp_path / "gone.tar"),
            count=4,
            valid=np.arange(4, dtype=np.int64),
        )
    ]
    source = ViewSource(aug=crop_flip(8), seed=0, num_classes=10, channels=1)
    plan = plan_training(
        rows, seed=0, epoch=0, rank=0, world_size=1, batch_size=2, shuffle_buffer=1
    )
    with pytest.raises(UserError, match=r"^shard .*gone.tar does not exist$"):
        next(iter_view_batches(source, rows, plan, view=0, workers=1))


def test_evaluation_covers_every_sample_once_over_ranks_and_workers(
    digit_shards: ShardSet,
) -> None:
    seen: Counter[tuple[int, int]] = Counter()
    for rank in range(2):
        batches = list(
            eval_batches(
                digit_shards, image_size=16, batch_size=10, rank=rank, world_size=2, workers=2
            )
        )
        assert all(len(b.labels) == 10 for b in batches[:-1]) and len(batches[-1].labels) <= 10
        for batch in batches:
            assert batch.images.shape[1:] == (1, 16, 16)
            seen.update(zip(batch.shards.tolist(), batch.positions.tolist(), strict=True))
    assert seen == Counter((s, p) for s in range(3) for p in range(24))
    # Four ranks over three shards: the last rank gets nothing, the others everything.
    assert (
        list(eval_batches(digit_shards, image_size=16, batch_size=10, rank=3, world_size=4)) == []
    )


def test_evaluation_labels_match_the_shards(digit_shards: ShardSet) -> None:
    (batch,) = list(eval_batches(digit_shards, image_size=16, batch_size=400))
    expected = [s.label for p in digit_shards.paths for s in iter_shard(p, channels=1)]
    assert batch.labels.tolist() == expected
    assert float(batch.images.min()) >= 0.0 and float(batch.images.max()) <= 1.0


def _index(image_size: tuple[int, int] | None) -> ShardIndex:
    return ShardIndex(
        shards=(ShardInfo("a.tar", 1, "0"),),
        class_names=("x",),
        source="test",
        split="train",
        channels=1,
        image_size=image_size,
        mean=(0.5,),
        std=(0.25,),
        format="png",
    )


def test_default_image_size_follows_native_side() -> None:
    assert default_image_size(_index((8, 8))) == 16
    assert default_image_size(_index((28, 28))) == 28
    assert default_image_size(_index((64, 48))) == 64
    assert default_image_size(_index((96, 96))) == 224
    assert default_image_size(_index(None)) == 224
