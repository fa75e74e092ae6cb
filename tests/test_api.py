"""The public Python API (``import civt_pipe``, docs/api.md) and the examples that use it.

The central promise: ``ReplayedViews`` gives the batches train-student trains on, bit for bit
(same keys, replayed images with the stored digests, targets and stored top-k), and the loss is
train-student's.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from toy_shards import subset_shards

import civt_pipe
from civt_pipe.pipeline import api
from civt_pipe.pipeline.augment.config import AugmentConfig
from civt_pipe.pipeline.augment.render import view_digests
from civt_pipe.pipeline.data.make_shards import MakeShardsConfig, make_shards
from civt_pipe.pipeline.models.checkpoint import make_checkpoint, save_checkpoint
from civt_pipe.pipeline.replay.segments import ViewBatch
from civt_pipe.pipeline.stages.dump.run import DumpConfig, TeacherSpec, run_dump
from civt_pipe.pipeline.stages.student.config import StudentTrainConfig
from civt_pipe.pipeline.stages.student.run import train_student
from civt_pipe.pipeline.train.losses import civt_loss
from civt_pipe.pipeline.train.steps import DistillationStep
from civt_pipe.stores.logit_store import LogitStore

ROOT = Path(__file__).resolve().parents[1]
SIZE = 16


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three 24-sample digit shards, a 24-sample shard of others, and a store (V = 2, k = 5 of
    C = 10) from two untrained nano teachers."""
    root = tmp_path_factory.mktemp("api")
    make_shards(
        MakeShardsConfig(source="digits", out_dir=root / "all", split="test", shard_size=24)
    )
    subset_shards(root / "all", root / "train", 0, 3)
    subset_shards(root / "all", root / "other", 3, 1)
    torch.manual_seed(0)
    specs = []
    for name, arch in (("cnn", "cnn-nano"), ("inn", "inn-nano")):
        model = civt_pipe.create_model(arch, num_classes=10, in_chans=1, image_size=SIZE)
        save_checkpoint(root / f"{name}.pt", make_checkpoint(model))
        specs.append(TeacherSpec.parse(f"{name}={arch}:{root / f'{name}.pt'}"))
    store = root / "store.zarr"
    run_dump(
        DumpConfig(
            data=str(root / "train"),
            teachers=tuple(specs),
            out=store,
            views=2,
            topk=5,
            seed=3,
            workers=0,
            device="cpu",
            aug="small",
            progress=False,
        )
    )
    return {"root": root, "train": root / "train", "other": root / "other", "store": store}


# ------------------------------------------------------------------------------ the package


def test_the_package_exports_the_api_and_nothing_else() -> None:
    # Every public name is a function or a class; the submodules and __future__'s flag are not.
    public = {name for name, value in vars(api).items() if callable(value)}
    assert sorted(public) == sorted(civt_pipe.__all__)
    for name in civt_pipe.__all__:
        value = getattr(civt_pipe, name)
        assert value is getattr(api, name)
        assert value.__doc__, f"civt_pipe.{name} has no docstring"
    assert "open_store" in dir(civt_pipe)
    with pytest.raises(AttributeError, match="no attribute 'internal'"):
        _ = civt_pipe.internal  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------ open_store


def test_open_store_describes_what_inspect_store_reports(world: dict[str, Any]) -> None:
    store = civt_pipe.open_store(world["store"])
    report = store.report()
    assert store.num_classes == report["num_classes"] == 10
    assert (store.num_views, store.topk) == (report["num_views"], report["topk"]) == (2, 5)
    assert store.teacher_names == [t["name"] for t in report["teachers"]] == ["cnn", "inn"]
    assert [t.arch for t in store.teachers] == ["cnn-nano", "inn-nano"]
    assert store.augment == AugmentConfig.from_dict(report["attrs"]["augment"])
    assert store.seed == 3 and store.image_size == store.augment.image_size
    assert store.class_names == tuple(report["attrs"]["class_names"])
    assert store.channels == 1 and store.complete
    assert store.num_samples == report["num_samples"] == 72
    assert store.decoder == report["attrs"]["decoder"]


def test_open_store_refuses_what_is_not_a_store_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(civt_pipe.StoreError, match="no logit store at"):
        civt_pipe.open_store(tmp_path / "missing.zarr")


# ------------------------------------------------------------------------------ ReplayedViews


def _record_train_student(world: dict[str, Any], out: Path, **settings: Any) -> list[ViewBatch]:
    """Run train-student and keep every batch its distillation step received."""
    seen: list[ViewBatch] = []
    step = DistillationStep.__call__

    def recording(self: DistillationStep, model: torch.nn.Module, batch: Any) -> Any:
        seen.append(batch)
        return step(self, model, batch)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DistillationStep, "__call__", recording)
        _train(world, out, settings)
    return seen


def _train(world: dict[str, Any], out: Path, settings: dict[str, Any]) -> None:
    args: dict[str, Any] = dict(
        data=str(world["train"]),
        store=str(world["store"]),
        out=str(out),
        model="civt-nano",
        epochs=2,
        batch_size=16,
        shuffle_buffer=32,
        device="cpu",
        progress=False,
    )
    train_student(StudentTrainConfig(**{**args, **settings}))


@pytest.fixture(scope="module")
def student_run(world: dict[str, Any]) -> tuple[Path, list[ViewBatch]]:
    """Two epochs of train-student on the whole store: its run directory and its batches."""
    out = world["root"] / "student-run"
    return out, _record_train_student(world, out)


def _assert_same_batch(ours: ViewBatch, theirs: ViewBatch) -> None:
    assert ours.keys == theirs.keys
    assert torch.equal(ours.images, theirs.images)
    assert torch.equal(ours.labels, theirs.labels)
    assert torch.equal(ours.label_targets, theirs.label_targets)
    assert list(ours.teachers) == list(theirs.teachers)
    for name, topk in ours.teachers.items():
        assert torch.equal(topk.logprobs, theirs.teachers[name].logprobs)
        assert torch.equal(topk.indices, theirs.teachers[name].indices)
        assert torch.equal(topk.lse, theirs.teachers[name].lse)


def _stored_digests(store_path: Path, view: int) -> dict[str, int]:
    """key -> the digest dump-logits stored for ``view``."""
    store = LogitStore.open(store_path)
    digests: dict[str, int] = {}
    for shard in store.shards:
        block = store.read_view(shard.name, view)
        digests.update(zip(block.keys, block.digests.tolist(), strict=True))
    return digests


@pytest.mark.parametrize(
    ("settings", "options"),
    [
        ({}, {}),
        (
            {"store_views": 1, "store_topk": 3, "store_teachers": ("inn",)},
            {"views": 1, "topk": 3, "teachers": ["inn"]},
        ),
    ],
    ids=["whole-store", "store-subset"],
)
def test_replayed_views_are_the_batches_train_student_trains_on(
    world: dict[str, Any],
    student_run: tuple[Path, list[ViewBatch]],
    tmp_path: Path,
    settings: dict[str, Any],
    options: dict[str, Any],
) -> None:
    seen = (
        _record_train_student(world, tmp_path / "run", **settings) if settings else student_run[1]
    )
    views = civt_pipe.ReplayedViews(
        world["train"], world["store"], batch_size=16, shuffle_buffer=32, verify="all", **options
    )
    assert len(views) == views.steps_per_epoch == 72 // 16
    assert len(seen) == 2 * len(views)
    ours: list[ViewBatch] = []
    for epoch in range(2):
        views.set_epoch(epoch)
        ours.extend(views)
    for mine, theirs in zip(ours, seen, strict=True):
        _assert_same_batch(mine, theirs)
    # The replayed images are the views the teachers saw: their digests are the stored ones.
    num_views = options.get("views", 2)
    for epoch in range(2):
        stored = _stored_digests(world["store"], epoch % num_views)
        for batch in ours[epoch * len(views) : (epoch + 1) * len(views)]:
            assert view_digests(batch.images).tolist() == [stored[k] for k in batch.keys]
    k = options.get("topk", 5)
    assert all(t.k == k for b in ours for t in b.teachers.values())
    assert list(ours[0].teachers) == options.get("teachers", ["cnn", "inn"])


def test_replayed_views_work_inside_a_data_loader_and_say_why_not_with_its_workers(
    world: dict[str, Any],
) -> None:
    views = civt_pipe.ReplayedViews(world["train"], world["store"], batch_size=16, epoch=1)
    assert views.view == 1 and views.teachers == ["cnn", "inn"] and views.num_classes == 10
    direct = list(views.batches(1))
    for mine, theirs in zip(DataLoader(views, batch_size=None), direct, strict=True):
        _assert_same_batch(mine, theirs)
    # A resumed epoch starts at its step without reading what came before: the same batches.
    for mine, theirs in zip(views.batches(1, start_step=2), direct[2:], strict=True):
        _assert_same_batch(mine, theirs)
    with pytest.raises(civt_pipe.UserError, match="without num_workers"):
        list(DataLoader(views, batch_size=None, num_workers=2))


def test_rank_and_world_come_from_the_environment(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    second = civt_pipe.ReplayedViews(world["train"], world["store"], batch_size=8)
    assert (second.rank, second.world_size) == (1, 2)
    assert len(second) == 72 // (8 * 2)
    first = civt_pipe.ReplayedViews(world["train"], world["store"], batch_size=8, rank=0)
    assert (first.rank, first.world_size) == (0, 2)
    explicit = civt_pipe.ReplayedViews(
        world["train"], world["store"], batch_size=8, rank=1, world_size=2
    )
    keys = [b.keys for b in second]
    assert keys == [b.keys for b in explicit]
    # The ranks read different shards: no sample twice in one epoch.
    mine = {k for batch in keys for k in batch}
    assert not mine & {k for b in first for k in b.keys}


def test_replayed_views_refuse_a_mismatch_in_one_line(world: dict[str, Any]) -> None:
    with pytest.raises(civt_pipe.UserError, match="built from other shards"):
        civt_pipe.ReplayedViews(world["other"], world["store"], batch_size=8)
    with pytest.raises(civt_pipe.UserError, match="between 1 and 2"):
        civt_pipe.ReplayedViews(world["train"], world["store"], batch_size=8, views=3)
    with pytest.raises(civt_pipe.UserError, match="is not a teacher of store"):
        civt_pipe.ReplayedViews(world["train"], world["store"], batch_size=8, teachers=["vit"])
    with pytest.raises(civt_pipe.UserError, match="cannot fill one batch"):
        civt_pipe.ReplayedViews(world["train"], world["store"], batch_size=100)
    with pytest.raises(civt_pipe.UserError, match="rank 2 is not in a world of 2"):
        civt_pipe.ReplayedViews(world["train"], world["store"], batch_size=8, rank=2, world_size=2)


def test_api_defaults_are_train_students_defaults() -> None:
    """The API's defaults cannot drift from the command's (docs/api.md maps one to the other)."""
    import inspect

    params = inspect.signature(civt_pipe.ReplayedViews.__init__).parameters
    cli = StudentTrainConfig(data="d", store="s", out="o")
    assert params["shuffle_buffer"].default == cli.shuffle_buffer
    assert params["verify"].default == cli.verify_replay
    assert params["decoder"].default == cli.decoder
    assert params["workers"].default == cli.workers
    loss = inspect.signature(civt_pipe.distillation_loss).parameters
    assert loss["lambda_cls"].default == cli.lambda_cls
    assert inspect.signature(civt_pipe.dense_targets).parameters["temperature"].default == cli.tau


# ------------------------------------------------------------------------------ loss and targets


def test_dense_targets_and_distillation_loss_are_train_students(world: dict[str, Any]) -> None:
    from civt_pipe.pipeline.data.shard_set import resolve_shards
    from civt_pipe.pipeline.replay.binding import bind_store
    from civt_pipe.pipeline.stages.student.run import teacher_targets

    views = civt_pipe.ReplayedViews(world["train"], world["store"], batch_size=16)
    batch = next(iter(views))
    taus = {"cnn": 2.0, "inn": 0.5}
    setup = bind_store(world["store"], str(world["train"]), resolve_shards(str(world["train"])))
    theirs = teacher_targets(batch, setup, taus, torch.device("cpu"), batch.images)
    ours = {
        name: civt_pipe.dense_targets(topk, taus[name], num_classes=10)
        for name, topk in batch.teachers.items()
    }
    for name in ours:
        assert torch.equal(ours[name], theirs[name])
        assert torch.allclose(ours[name].sum(-1), torch.ones(16))
    torch.manual_seed(0)
    student = civt_pipe.create_model(
        "civt-nano", num_classes=10, in_chans=1, image_size=SIZE, teacher_names=["cnn", "inn"]
    )
    outputs = student(batch.images)
    loss = civt_pipe.distillation_loss(outputs, batch.label_targets, ours, taus=taus, lambdas=0.5)
    same = civt_loss(
        outputs, batch.label_targets, theirs, taus=taus, lambdas={"cnn": 0.5, "inn": 0.5}
    )
    assert torch.equal(loss.total, same.total)


def test_distillation_loss_of_a_single_head_model_is_eq_5_with_batchmean(
    world: dict[str, Any],
) -> None:
    views = civt_pipe.ReplayedViews(world["train"], world["store"], batch_size=16, teachers=["cnn"])
    batch = next(iter(views))
    logits = torch.randn(16, 10, generator=torch.Generator().manual_seed(1))
    tau = 2.0
    target = civt_pipe.dense_targets(batch.teachers["cnn"], tau, num_classes=10)
    loss = civt_pipe.distillation_loss(
        logits, batch.label_targets, {"cnn": target}, taus=tau, lambdas=0.3, lambda_cls=0.7
    )
    ce = -(batch.label_targets * F.log_softmax(logits, -1)).sum(-1).mean()
    kl = F.kl_div(F.log_softmax(logits / tau, -1), target, reduction="batchmean") * tau**2
    assert torch.allclose(loss.cls, ce) and torch.allclose(loss.kd["cnn"], kl, atol=1e-6)
    assert torch.allclose(loss.total, 0.7 * ce + 0.3 * kl, atol=1e-6)


# ------------------------------------------------------------------------------ models


def test_load_model_gives_back_a_trained_student(student_run: tuple[Path, list[ViewBatch]]) -> None:
    out = student_run[0]
    model = civt_pipe.load_model(out)  # a run directory stands for its final.pt
    weights_only = civt_pipe.load_model(out / "final.safetensors")
    assert not model.training and model.arch == "civt-nano"
    assert model.model_args["teacher_names"] == ["cnn", "inn"]
    images = torch.rand(2, 1, SIZE, SIZE)
    with torch.no_grad():
        a, b = model(images), weights_only(images)
    assert set(a) == {"cls", "cnn", "inn"} and all(torch.equal(a[k], b[k]) for k in a)
    assert "civt-nano" in civt_pipe.list_models()


# ------------------------------------------------------------------------------ examples


def _example_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


@pytest.mark.parametrize("model", ["timm:test_resnet", "torchvision:resnet18"])
def test_the_plain_pytorch_example_trains_from_a_store(
    world: dict[str, Any], tmp_path: Path, model: str
) -> None:
    script = ROOT / "examples" / "train_plain_pytorch.py"
    assert len(script.read_text().splitlines()) <= 60
    out = tmp_path / "model.pt"
    args = ["--data", str(world["train"]), "--store", str(world["store"]), "--model", model]
    args += ["--epochs", "2", "--steps", "2", "--batch-size", "16", "--out", str(out)]
    result = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        env=_example_env(),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert [line.split(" loss ")[0] for line in lines] == [
        f"epoch {e} step {s}" for e in range(2) for s in range(2)
    ]
    assert all(torch.isfinite(torch.tensor(float(line.rsplit(" ", 1)[1]))) for line in lines)
    assert out.is_file() and torch.load(out, weights_only=True)


def _timm_plugin() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "timm_plugin", ROOT / "examples" / "timm_plugin.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_timm_plugin_trains_a_timm_model_one_step(world: dict[str, Any]) -> None:
    import timm

    plugin = _timm_plugin()
    loader = plugin.StoreLoader(
        world["train"], world["store"], batch_size=16, mean=(0.5,), std=(0.25,), tau=2.0
    )
    loader.set_epoch(1)
    assert len(loader) == 72 // 16 and loader.teachers == ["cnn", "inn"]
    images, target = next(iter(loader))
    assert images.shape == (16, 1, SIZE, SIZE) and target.shape == (16, 3, 10)
    # The packed target is the label target and each teacher's dense target at τ.
    views = civt_pipe.ReplayedViews(world["train"], world["store"], batch_size=16, epoch=1)
    batch = next(iter(views))
    assert torch.equal(images, (batch.images - 0.5) / 0.25)
    assert torch.equal(target[:, 0], batch.label_targets)
    assert torch.equal(
        target[:, 2], civt_pipe.dense_targets(batch.teachers["inn"], 2.0, num_classes=10)
    )
    with pytest.raises(ValueError, match="1 channel"):  # timm's default: ImageNet's 3 values
        plugin.StoreLoader(world["train"], world["store"], batch_size=16, mean=(0.5,) * 3)
    model = timm.create_model("test_resnet", num_classes=10, in_chans=1)
    loss_fn = plugin.StoreLoss(loader.teachers, tau=2.0, lambda_kd=0.5)
    output = model(images)
    loss = loss_fn(output, target)
    expected = civt_pipe.distillation_loss(
        output,
        batch.label_targets,
        {n: civt_pipe.dense_targets(t, 2.0, num_classes=10) for n, t in batch.teachers.items()},
        taus=2.0,
        lambdas=0.5,
    )
    assert torch.equal(loss, expected.total)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_the_complete_example_in_docs_api_md_runs(
    world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/api.md's example, as printed, for one epoch on the digits store."""
    text = (ROOT / "docs" / "api.md").read_text()
    code = text.split("## A complete example", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    paths = 'SHARDS, STORE = "work/train", "work/store.zarr"'
    assert paths in code and "EPOCHS, TAU = 30, 1.0" in code
    code = code.replace(paths, f"SHARDS, STORE = {str(world['train'])!r}, {str(world['store'])!r}")
    code = code.replace("EPOCHS, TAU = 30, 1.0", "EPOCHS, TAU = 1, 1.0")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/api.md", "exec"), {"__name__": "docs_api_example"})
    assert torch.load(tmp_path / "resnet18-from-store.pt", weights_only=True)
    for page in ("README.md", "docs/index.md"):
        assert "api.md" in (ROOT / page).read_text(), f"{page} does not link docs/api.md"
