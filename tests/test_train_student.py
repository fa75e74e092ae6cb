"""train-student end to end on tiny digits: store mode, online mode, checkpoints, bad input."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from toy_shards import subset_shards
from typer.testing import CliRunner

from civt_pipe.cli.app import app
from civt_pipe.pipeline.augment.config import AugmentConfig
from civt_pipe.pipeline.data.make_shards import MakeShardsConfig, make_shards
from civt_pipe.pipeline.data.planning import plan_training, shard_rows_for
from civt_pipe.pipeline.data.shard_set import resolve_shards
from civt_pipe.pipeline.models.checkpoint import (
    load_checkpoint,
    make_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from civt_pipe.pipeline.models.factory import create_model
from civt_pipe.pipeline.replay.online_teachers import load_online_teachers, teacher_probs
from civt_pipe.pipeline.replay.segments import ViewSource, iter_view_batches
from civt_pipe.pipeline.runtime.errors import UserError
from civt_pipe.pipeline.stages.dump.run import DumpConfig, TeacherSpec, run_dump
from civt_pipe.pipeline.stages.student.config import StudentTrainConfig, parse_per_teacher
from civt_pipe.pipeline.stages.student.run import train_student
from civt_pipe.pipeline.train.losses import civt_loss
from civt_pipe.pipeline.train.run_options import warmup_steps_for
from civt_pipe.stores.logit_store import LogitStore

SIZE = 16


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three 24-sample digit shards, a 24-sample validation shard, two untrained nano teachers
    and a store with V=2 views and k = C = 10 dumped from them."""
    root = tmp_path_factory.mktemp("student")
    make_shards(
        MakeShardsConfig(source="digits", out_dir=root / "all", split="test", shard_size=24)
    )
    train = subset_shards(root / "all", root / "train", 0, 3)
    val = subset_shards(root / "all", root / "val", 3, 1)
    torch.manual_seed(0)
    specs = []
    for name, arch in (("cnn", "cnn-nano"), ("inn", "inn-nano")):
        model = create_model(arch, num_classes=10, in_chans=1, image_size=SIZE)
        ckpt = root / f"{name}.pt"
        save_checkpoint(ckpt, make_checkpoint(model))
        specs.append(f"{name}={arch}:{ckpt}")
    store = root / "store.zarr"
    run_dump(
        DumpConfig(
            data=str(train),
            teachers=tuple(TeacherSpec.parse(s) for s in specs),
            out=store,
            views=2,
            topk=10,
            seed=0,
            workers=0,
            device="cpu",
            aug="small",
            progress=False,
        )
    )
    return {"root": root, "train": train, "val": val, "store": store, "teachers": specs}


def _cfg(world: dict[str, Any], out: Path, **kw: Any) -> StudentTrainConfig:
    args: dict[str, Any] = dict(
        data=str(world["train"]),
        store=str(world["store"]),
        out=str(out),
        model="civt-nano",
        epochs=2,
        batch_size=16,
        device="cpu",
        progress=False,
        shuffle_buffer=32,
    )
    args.update(kw)
    return StudentTrainConfig(**args)


def test_store_mode_trains_and_writes_a_loadable_run(world: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "run"
    summary = train_student(_cfg(world, out, val=str(world["val"]), verify_replay="all"))
    assert summary["steps"] == 2 * (72 // 16) and summary["epochs"] == 2
    assert summary["teachers"] == ["cnn", "inn"] and summary["mode"] == "store"
    assert set(summary["val"]) == {"cls", "cnn", "inn", "mean"} or "cls" in summary["val"]
    for name in ("last.pt", "final.pt", "metrics.jsonl", "config.json"):
        assert (out / name).is_file()
    _model, meta = model_from_checkpoint(out / "final.pt", expect_kind="student")
    assert meta["model_args"]["teacher_names"] == ["cnn", "inn"]
    assert meta["model_args"]["token_mode"] == "per-teacher"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    # log_every defaults to 10: with 4 steps an epoch, the step record comes at each epoch end.
    assert len(steps) == 2 and len(epochs) == 2
    assert {"loss", "loss_cls", "loss_kd_cnn", "loss_kd_inn", "lr", "images_per_s"} <= set(steps[0])
    assert any(k.startswith("val_") for k in epochs[-1])
    # JSON "loss" is the last epoch's mean per term, the figures of its epoch record (not the
    # last batch's).
    assert summary["loss"] == {k: epochs[-1][k] for k in summary["loss"]}
    assert {"loss", "loss_cls", "loss_kd_cnn", "loss_kd_inn"} <= set(summary["loss"])


def test_cli_json_summary_and_refusal_to_reuse_a_run_dir(
    world: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    args = ["train-student", "--data", str(world["train"]), "--store", str(world["store"])]
    args += ["--model", "civt-nano", "--out", str(out), "--epochs", "1", "--batch-size", "24"]
    args += ["--device", "cpu", "--tau", "cnn=2", "--lambda", "0.5", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["final_checkpoint"] == str(out / "final.pt")
    assert summary["epochs"] == 1 and summary["steps"] == 3 and summary["val"] == {}
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2
    assert "--resume" in again.output and "--overwrite" in again.output


def test_both_modes_give_the_same_loss_on_the_same_batch(world: dict[str, Any]) -> None:
    """k = C, so the store's targets differ from live softmax only by float16 rounding of the
    stored logits (rounded down, at most 2^-11 relative): the losses agree to 1e-3."""
    store = LogitStore.open(world["store"])
    aug = AugmentConfig.from_dict(store.user_attrs["augment"])
    shard_set = resolve_shards(str(world["train"]))
    rows = shard_rows_for(shard_set.paths, [s.num_samples for s in shard_set.index.shards])
    plan = plan_training(
        rows, seed=0, epoch=1, rank=0, world_size=1, batch_size=16, shuffle_buffer=32
    )
    stored_src = ViewSource(aug=aug, seed=0, num_classes=10, channels=1, store=store)
    online_src = ViewSource(aug=aug, seed=0, num_classes=10, channels=1)
    stored = next(iter_view_batches(stored_src, rows, plan, view=1))
    online = next(iter_view_batches(online_src, rows, plan, view=1))
    assert torch.equal(stored.images, online.images)
    assert torch.equal(stored.label_targets, online.label_targets)
    teachers = load_online_teachers(
        world["teachers"], torch.device("cpu"), num_classes=10, in_chans=1
    ).models
    taus = {"cnn": 1.0, "inn": 2.0}
    live = teacher_probs(teachers, online.images, taus)
    from_store = {name: topk.dense(10, taus[name]) for name, topk in stored.teachers.items()}
    torch.manual_seed(0)
    student = create_model(
        "civt-nano", num_classes=10, in_chans=1, image_size=SIZE, teacher_names=["cnn", "inn"]
    ).eval()
    with torch.no_grad():
        outputs = student(stored.images)
    a = civt_loss(outputs, stored.label_targets, from_store, taus=taus)
    b = civt_loss(outputs, online.label_targets, live, taus=taus)
    assert torch.allclose(a.total, b.total, atol=1e-3, rtol=0)
    for name in ("cnn", "inn"):
        assert torch.allclose(a.kd[name], b.kd[name], atol=1e-3, rtol=0)


def test_online_mode_trains_without_a_store(world: dict[str, Any], tmp_path: Path) -> None:
    cfg = _cfg(world, tmp_path / "run", store=None, teachers=tuple(world["teachers"]), epochs=1)
    summary = train_student(cfg)
    assert summary["mode"] == "online" and summary["steps"] == 4
    assert summary["teachers"] == ["cnn", "inn"]


def test_store_from_other_shards_is_refused_before_training(
    world: dict[str, Any], tmp_path: Path
) -> None:
    with pytest.raises(UserError, match="built from other shards"):
        train_student(_cfg(world, tmp_path / "run", data=str(world["val"])))
    assert not (tmp_path / "run" / "last.pt").exists()


def test_store_with_another_seed_is_refused(world: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(UserError, match="built with seed 0, but --seed is 7"):
        train_student(_cfg(world, tmp_path / "run", seed=7))


def test_incomplete_store_is_refused(world: dict[str, Any], tmp_path: Path) -> None:
    spec = LogitStore.open(world["store"]).spec
    LogitStore.create(tmp_path / "partial.zarr", spec)
    with pytest.raises(UserError, match="incomplete"):
        train_student(_cfg(world, tmp_path / "run", store=str(tmp_path / "partial.zarr")))


def test_tau_or_lambda_for_an_unknown_teacher_is_refused(
    world: dict[str, Any], tmp_path: Path
) -> None:
    with pytest.raises(UserError, match="--tau names teacher 'vit'"):
        train_student(_cfg(world, tmp_path / "a", taus={"vit": 2.0}))
    with pytest.raises(UserError, match="--lambda names teacher 'cnm'"):
        train_student(_cfg(world, tmp_path / "b", lambdas={"cnm": 2.0}))


def test_parse_per_teacher_values() -> None:
    assert parse_per_teacher(["2", "cnn=4"], "--tau") == (2.0, {"cnn": 4.0})
    with pytest.raises(UserError, match="--tau 'x' is not a number"):
        parse_per_teacher(["x"], "--tau")


def test_warmup_is_clamped_for_short_runs() -> None:
    assert warmup_steps_for(5, 300, 10) == 50
    assert warmup_steps_for(5, 10, 10) == 20


def test_resume_rejects_other_options_and_other_token_counts(
    world: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    train_student(_cfg(world, out, epochs=1, batch_size=24))
    with pytest.raises(UserError, match="batch_size"):
        train_student(_cfg(world, out, epochs=1, batch_size=8, resume=True))
    one = tmp_path / "one"
    cfg = _cfg(world, one, store=None, teachers=(world["teachers"][0],), epochs=1, batch_size=24)
    train_student(cfg)
    with pytest.raises(UserError, match="1 teacher token"):
        train_student(_cfg(world, one, epochs=1, batch_size=24, resume=True))


def test_resume_refuses_other_teacher_weights_behind_the_same_names(
    world: dict[str, Any], tmp_path: Path
) -> None:
    spec = TeacherSpec.parse(world["teachers"][0])
    other = tmp_path / "other.pt"
    ckpt = load_checkpoint(spec.checkpoint)
    ckpt["state_dict"] = {
        k: v + 0.01 if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()
    }
    save_checkpoint(other, ckpt)
    out = tmp_path / "run"
    train_student(_cfg(world, out, store=None, teachers=(world["teachers"][0],), epochs=1))
    swapped = f"{spec.name}={spec.arch}:{other}"
    with pytest.raises(UserError, match=r"cannot resume .*targets"):
        train_student(_cfg(world, out, store=None, teachers=(swapped,), epochs=1, resume=True))


def test_epochs_beyond_views_warn_and_resuming_a_finished_run_keeps_its_weights(
    world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    first = train_student(_cfg(world, out, epochs=3, batch_size=24))
    assert "views repeat" in capsys.readouterr().err
    again = train_student(replace(_cfg(world, out, epochs=3, batch_size=24), resume=True))
    assert again["weights_sha256"] == first["weights_sha256"] and again["steps"] == 9


def test_a_replay_that_misses_the_stored_digest_stops_training(
    world: dict[str, Any], tmp_path: Path
) -> None:
    import shutil

    copy = tmp_path / "store.zarr"
    shutil.copytree(world["store"], copy)
    digests = LogitStore.open(copy, mode="r+").array("digests")
    digests[0, 0] = digests[0, 0] ^ 1  # row 0 (first shard, first block), view 0
    with pytest.raises(UserError, match="does not match the digest stored"):
        train_student(_cfg(world, tmp_path / "run", store=str(copy), epochs=1))
    assert not (tmp_path / "run" / "last.pt").exists()


# --------------------------------------------------------------------------------------------
# Token modes, hard distillation and recipes through real (tiny) runs


def _store_with_archs(world: dict[str, Any], tmp_path: Path, archs: dict[str, str]) -> Path:
    """A copy of the world's store whose teachers claim other architectures (attributes only)."""
    import shutil

    copy = tmp_path / "other-archs.zarr"
    shutil.copytree(world["store"], copy)
    meta_path = copy / "zarr.json"
    meta = json.loads(meta_path.read_text())
    for teacher in meta["attributes"]["teachers"]:
        teacher["arch"] = archs.get(teacher["name"], teacher["arch"])
    meta_path.write_text(json.dumps(meta))
    return copy


def _config_json(out: Path) -> dict[str, Any]:
    return json.loads((out / "config.json").read_text())


def test_aligned_run_takes_roles_from_the_store_archs(
    world: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    summary = train_student(_cfg(world, out, token_mode="aligned", epochs=1, batch_size=24))
    assert summary["steps"] == 3
    assert _config_json(out)["resolved"]["align"] == {"cnn": "conv", "inn": "inv"}
    _model, meta = model_from_checkpoint(out / "final.pt", expect_kind="student")
    assert meta["model_args"]["token_mode"] == "aligned"
    # An explicit --align swaps the roles; resuming with other roles is refused.
    swapped = tmp_path / "swapped"
    cfg = _cfg(world, swapped, token_mode="aligned", align={"cnn": "inv", "inn": "conv"}, epochs=1)
    train_student(replace(cfg, batch_size=24))
    assert _config_json(swapped)["resolved"]["align"] == {"cnn": "inv", "inn": "conv"}
    with pytest.raises(UserError, match="cannot resume"):
        train_student(
            _cfg(world, swapped, token_mode="aligned", epochs=1, batch_size=24, resume=True)
        )


def test_aligned_refuses_two_cnn_teachers_and_a_single_teacher(
    world: dict[str, Any], tmp_path: Path
) -> None:
    store = _store_with_archs(world, tmp_path, {"inn": "cnn-nano"})
    with pytest.raises(UserError, match="one convolution and one involution teacher"):
        train_student(_cfg(world, tmp_path / "a", store=str(store), token_mode="aligned"))
    one = (world["teachers"][0],)
    with pytest.raises(UserError, match="exactly two teachers"):
        train_student(_cfg(world, tmp_path / "b", store=None, teachers=one, token_mode="aligned"))
    assert not (tmp_path / "a" / "last.pt").exists() and not (tmp_path / "b" / "last.pt").exists()


def test_cls_mode_trains_the_class_head_on_labels_and_teachers(
    world: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    train_student(_cfg(world, out, token_mode="cls", epochs=1, batch_size=24))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_cls", "loss_kd_cnn", "loss_kd_inn"} <= set(records[-1])
    _model, meta = model_from_checkpoint(out / "final.pt", expect_kind="student")
    assert meta["model_args"]["token_mode"] == "cls"


def test_hard_target_is_the_stored_arg_max(world: dict[str, Any]) -> None:
    from civt_pipe.pipeline.replay.binding import bind_store
    from civt_pipe.pipeline.stages.student.run import teacher_targets

    shard_set = resolve_shards(str(world["train"]))
    setup = bind_store(world["store"], str(world["train"]), shard_set)
    plan = plan_training(
        setup.shards, seed=0, epoch=0, rank=0, world_size=1, batch_size=16, shuffle_buffer=32
    )
    source = ViewSource(aug=setup.aug, seed=0, num_classes=10, channels=1, store=setup.store)
    batch = next(iter_view_batches(source, setup.shards, plan, view=0))
    taus = {"cnn": 1.0, "inn": 1.0}
    cpu = torch.device("cpu")
    targets = teacher_targets(batch, setup, taus, cpu, batch.images, hard={"cnn"})
    assert targets["cnn"].dtype == torch.int64 and targets["cnn"].shape == (16,)
    assert torch.equal(targets["cnn"], batch.teachers["cnn"].indices[:, 0].long())
    # k = C here, so the dense target is the whole distribution: its arg-max is the same class.
    assert torch.equal(targets["cnn"], batch.teachers["cnn"].dense(10).argmax(-1))
    assert targets["inn"].shape == (16, 10)  # the soft teacher keeps its distribution
    # Online, the hard target is the arg-max of the live logits: the same classes.
    teachers = load_online_teachers(world["teachers"], cpu, num_classes=10, in_chans=1).models
    live = teacher_probs(teachers, batch.images, taus, hard={"cnn"})
    assert torch.equal(live["cnn"], targets["cnn"])


def test_hard_distillation_run_logs_both_kinds_and_refuses_bad_names(
    world: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    train_student(_cfg(world, out, distills={"cnn": "hard"}, distill_smoothing=0.1, epochs=1))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_kd_cnn", "loss_kd_inn"} <= set(records[-1])
    saved = _config_json(out)
    assert saved["distills"] == {"cnn": "hard"} and saved["distill_smoothing"] == 0.1
    with pytest.raises(UserError, match="--distill names teacher 'vit'"):
        train_student(_cfg(world, tmp_path / "a", distills={"vit": "hard"}))
    with pytest.raises(UserError, match=r"--tau cnn=\.\.\. contradicts --distill cnn=hard"):
        train_student(_cfg(world, tmp_path / "b", distill="hard", taus={"cnn": 2.0}))


def test_recipe_values_and_their_sources_land_in_config_json(
    world: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    cfg = _cfg(world, out, recipe="coadvise", lr=2e-3, epochs=1, batch_size=24)
    train_student(cfg)
    hyper = _config_json(out)["hyperparameters"]
    assert hyper["recipe"] == "coadvise"
    assert hyper["lr"] == {"value": 2e-3, "from": "--lr (command line)"}
    assert hyper["min_lr"]["value"] == pytest.approx(5e-6 * 24 / 512)
    assert hyper["min_lr"]["from"].startswith("recipe coadvise: 5e-06 × 24/512")
    assert hyper["clip_grad"]["value"] == 15.0 and hyper["label_smoothing"]["value"] == 0.1
    assert hyper["drop_path"]["value"] == 0.0 and hyper["warmup_epochs"]["value"] == 20.0
    # 20 warm-up epochs in a 1-epoch run are clamped to a fifth of it: round(0.2 × 3) steps.
    assert hyper["warmup_steps"]["value"] == 1
    with pytest.raises(UserError, match="--drop-path: resnet10 has no stochastic depth"):
        train_student(_cfg(world, tmp_path / "r", model="resnet10", drop_path=0.1))


def test_hard_distillation_on_a_store_without_a_top1_is_one_line(
    world: dict[str, Any], tmp_path: Path
) -> None:
    """k ≥ 1 is part of the format; a store claiming k = 0 (no top-1) is refused on opening."""
    import shutil

    copy = tmp_path / "no-top1.zarr"
    shutil.copytree(world["store"], copy)
    meta = json.loads((copy / "zarr.json").read_text())
    meta["attributes"]["topk"] = 0
    (copy / "zarr.json").write_text(json.dumps(meta))
    args = ["train-student", "--data", str(world["train"]), "--store", str(copy)]
    args += ["--out", str(tmp_path / "run"), "--distill", "hard", "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("civt-pipe: error: "), result.output
    assert "teachers/cnn" in lines[0]


def test_until_plateau_stops_where_the_val_curve_says_and_records_it(
    world: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    summary = train_student(_cfg(world, out, val=str(world["val"]), epochs=6, until_plateau=1))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    curve = [r["val_cls"] for r in records if r["kind"] == "epoch"]  # cls: per-teacher headline
    # Where a patience of one epoch stops on this curve: after the first epoch that fails to
    # beat the best before it (or never).
    expected = next((e + 1 for e in range(1, len(curve)) if curve[e] <= max(curve[:e])), None)
    assert summary["stopped_at"] == (expected if expected is not None and expected < 6 else None)
    assert len(curve) == (summary["stopped_at"] or 6)
    assert summary["steps"] == len(curve) * (72 // 16)
    assert all("plateau_best" in r for r in records if r["kind"] == "epoch")
    assert (out / "final.pt").is_file()
