"""train-student on a subset of one store: ``--store-views``, ``--store-topk``, ``--store-teacher``.

Each subset must train exactly like a store dumped with only that subset (same seed): the views
study and the teacher-set ablation of ``civt-pipe study`` then need one dump, not one per
setting. Toy shards (48 gray 8 px images, 3 classes), two untrained nano teachers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from toy_shards import make_toy_shards
from typer.testing import CliRunner

from civt_pipe.cli.app import app
from civt_pipe.pipeline.models.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from civt_pipe.pipeline.models.factory import create_model
from civt_pipe.pipeline.models.teacher_spec import TeacherSpec
from civt_pipe.pipeline.runtime.errors import UserError
from civt_pipe.pipeline.runtime.run_layout import FINAL
from civt_pipe.pipeline.stages.dump.config import DumpConfig
from civt_pipe.pipeline.stages.dump.run import run_dump
from civt_pipe.pipeline.stages.student.config import StudentTrainConfig
from civt_pipe.pipeline.stages.student.run import train_student
from civt_pipe.stores.logit_store import LogitStore
from civt_pipe.stores.topk import TopKLogits

SEED = 3


@dataclass(frozen=True)
class Stores:
    data: str
    full: Path
    """V = 4, k = 3 (= C), teachers cnn and inn."""
    two_views: Path
    """V = 2, otherwise as ``full``."""
    top1: Path
    """k = 1, otherwise as ``full``."""
    inn_only: Path
    """Only the ``inn`` teacher, otherwise as ``full``."""


def _teacher(path: Path, arch: str, seed: int) -> Path:
    torch.manual_seed(seed)
    model = create_model(arch, num_classes=3, in_chans=1, image_size=8)
    save_checkpoint(path, make_checkpoint(model))
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Stores:
    root = tmp_path_factory.mktemp("subsets")
    data = make_toy_shards(root, "train")
    specs = {
        "cnn": TeacherSpec.parse(f"cnn=cnn-nano:{_teacher(root / 'cnn.pt', 'cnn-nano', 0)}"),
        "inn": TeacherSpec.parse(f"inn=inn-nano:{_teacher(root / 'inn.pt', 'inn-nano', 1)}"),
    }

    def dump(name: str, *, views: int = 4, topk: int = 3, teachers: tuple[str, ...]) -> Path:
        out = root / name
        run_dump(
            DumpConfig(
                data=str(data),
                teachers=tuple(specs[t] for t in teachers),
                out=out,
                image_size=8,
                views=views,
                topk=topk,
                seed=SEED,
                workers=0,
                device="cpu",
                threads=1,
                progress=False,
            )
        )
        return out

    both = ("cnn", "inn")
    return Stores(
        data=str(data),
        full=dump("full.zarr", teachers=both),
        two_views=dump("v2.zarr", views=2, teachers=both),
        top1=dump("k1.zarr", topk=1, teachers=both),
        inn_only=dump("inn.zarr", teachers=("inn",)),
    )


def _train(stores: Stores, store: Path, out: Path, **options: Any) -> dict[str, Any]:
    settings: dict[str, Any] = dict(
        epochs=3, batch_size=16, warmup_epochs=0, device="cpu", progress=False, threads=1
    )
    settings.update(options)
    return train_student(
        StudentTrainConfig(data=stores.data, store=str(store), out=str(out), **settings)
    )


def test_views_are_drawn_per_view_whatever_the_store_holds(stores: Stores) -> None:
    """A view is a function of (seed, view, key): V = 4's first two views are V = 2's views,
    mixing partners included (if they depended on V, --store-views could not mean 'a V = N
    store')."""
    full, two = LogitStore.open(stores.full), LogitStore.open(stores.two_views)
    for layout in full.shards:
        for view in range(2):
            a, b = full.read_view(layout.name, view), two.read_view(layout.name, view)
            np.testing.assert_array_equal(a.digests, b.digests)
            assert set(a.aug) == set(b.aug) and "mix_partner" in a.aug
            for name in a.aug:
                np.testing.assert_array_equal(a.aug[name], b.aug[name])
            for t in ("cnn", "inn"):
                assert torch.equal(a.teachers[t].logprobs, b.teachers[t].logprobs)


def test_store_views_trains_like_a_store_of_that_many_views(stores: Stores, tmp_path: Path) -> None:
    # Three epochs: epoch 2 replays view 0 of two views, but view 2 if the option were ignored.
    subset = _train(stores, stores.full, tmp_path / "subset", store_views=2, batch_size=24)
    dumped = _train(stores, stores.two_views, tmp_path / "dumped", batch_size=24)
    assert subset["weights_sha256"] == dumped["weights_sha256"]


def test_store_topk_target_is_that_of_a_store_dumped_with_that_k(stores: Stores) -> None:
    full, top1 = LogitStore.open(stores.full), LogitStore.open(stores.top1)
    for layout in full.shards:
        a, b = full.read_view(layout.name, 1), top1.read_view(layout.name, 1)
        for t in ("cnn", "inn"):
            kept = a.teachers[t].first(1)
            assert torch.equal(kept.indices, b.teachers[t].indices)
            # read_view's topk is that same cut, made where the view is read.
            cut = full.read_view(layout.name, 1, topk=1).teachers[t]
            assert torch.equal(cut.logprobs, kept.logprobs) and torch.equal(cut.lse, kept.lse)
            assert torch.equal(cut.indices, kept.indices)
            for tau in (1.0, 2.0):
                torch.testing.assert_close(kept.dense(3, tau), b.teachers[t].dense(3, tau))
            # The subset really drops information: k = 3 targets are other targets.
            assert not torch.allclose(a.teachers[t].dense(3), kept.dense(3))


def test_first_k_entries_are_the_top_k_of_the_logits() -> None:
    logits = torch.randn(5, 2, 10, generator=torch.Generator().manual_seed(0)) * 4
    kept = TopKLogits.from_logits(logits, 6).first(3)
    direct = TopKLogits.from_logits(logits, 3)
    assert torch.equal(kept.indices, direct.indices) and torch.equal(kept.lse, direct.lse)
    assert torch.equal(kept.logprobs, direct.logprobs)
    with pytest.raises(ValueError, match="cannot keep 7 of 6"):
        TopKLogits.from_logits(logits, 6).first(7)


def test_store_topk_trains_like_a_store_dumped_with_that_k(stores: Stores, tmp_path: Path) -> None:
    subset = _train(stores, stores.full, tmp_path / "subset", store_topk=1, epochs=1)
    dumped = _train(stores, stores.top1, tmp_path / "dumped", epochs=1)
    torch.testing.assert_close(_weights(subset), _weights(dumped))


def test_store_teacher_keeps_one_token_per_chosen_teacher(stores: Stores, tmp_path: Path) -> None:
    subset = _train(stores, stores.full, tmp_path / "subset", store_teachers=("inn",), epochs=1)
    dumped = _train(stores, stores.inn_only, tmp_path / "dumped", epochs=1)
    assert subset["teachers"] == ["inn"]
    args = load_checkpoint(tmp_path / "subset" / FINAL)["model_args"]
    assert list(args["teacher_names"]) == ["inn"]
    assert subset["weights_sha256"] == dumped["weights_sha256"]


def _weights(summary: dict[str, Any]) -> dict[str, torch.Tensor]:
    return load_checkpoint(Path(summary["final_checkpoint"]))["state_dict"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"store_views": 5}, r"--store-views must be between 1 and 4 \(the views of store"),
        ({"store_topk": 4}, r"--store-topk must be between 1 and 3 \(the k of store"),
        (
            {"store_teachers": ("cnn", "vit")},
            r"--store-teacher 'vit' is not a teacher of store .*; its teachers are cnn, inn",
        ),
    ],
)
def test_subsets_beyond_the_store_are_one_line(
    stores: Stores, tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(UserError, match=message):
        _train(stores, stores.full, tmp_path / "run", **options)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--store-views", "0"], "--store-views must be at least 1"),
        (["--store-topk", "0"], "--store-topk must be at least 1"),
        (["--store-views", "2"], "--store-views needs --store"),
        (["--store-topk", "2"], "--store-topk needs --store"),
        (["--store-teacher", "cnn"], "--store-teacher needs --store"),
    ],
)
def test_bad_subset_options_are_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    base = ["train-student", "--data", str(tmp_path), "--out", str(tmp_path / "run")]
    if "needs" not in message:
        base += ["--store", str(tmp_path / "s.zarr")]
    else:
        base += ["--teacher", "a=cnn-nano:a.pt"]
    result = CliRunner().invoke(app, [*base, *args])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines == [f"civt-pipe: error: {lines[0].split('error: ', 1)[1]}"]
    assert message in lines[0]


def test_a_teacher_named_twice_is_refused() -> None:
    with pytest.raises(UserError, match="--store-teacher 'cnn' is given twice"):
        StudentTrainConfig(data="d", out="o", store="s", store_teachers=("cnn", "cnn"))


def test_resume_with_another_subset_is_refused(stores: Stores, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = _train(stores, stores.full, out, store_views=2, store_topk=2, epochs=1)
    base = dict(store_views=2, store_topk=2, epochs=1, resume=True)
    again = _train(stores, stores.full, out, **base)
    assert again["weights_sha256"] == first["weights_sha256"]
    for change, field in (
        ({"store_views": 3}, "store_views"),
        ({"store_views": None}, "store_views"),
        ({"store_topk": 3}, "store_topk"),
    ):
        with pytest.raises(UserError, match=f"cannot resume.*{field}"):
            _train(stores, stores.full, out, **{**base, **change})
    with pytest.raises(UserError, match="teacher token"):
        _train(stores, stores.full, out, **{**base, "store_teachers": ("cnn",)})
