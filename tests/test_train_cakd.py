"""``train-cakd``: every method trains on toy shards; resume is exact; the saved student is the
student alone; the discriminator steps every 5th step; the multistep schedule and the paper's
SGD recipe; bad input is one line; ``evaluate --noise``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from toy_shards import make_toy_shards
from typer.testing import CliRunner

from civt_pipe.cli.app import app
from civt_pipe.pipeline.models.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from civt_pipe.pipeline.models.factory import create_model
from civt_pipe.pipeline.runtime.errors import UserError
from civt_pipe.pipeline.stages.cakd import run as cakd_run
from civt_pipe.pipeline.stages.cakd.config import (
    CakdTrainConfig,
    resolve_optimization,
)
from civt_pipe.pipeline.stages.cakd.run import train_cakd
from civt_pipe.pipeline.stages.evaluate.run import EvaluateConfig, evaluate
from civt_pipe.pipeline.train.schedule import (
    MultiStepSchedule,
    OptimizerConfig,
    ScheduleConfig,
    build_optimizer,
    lr_at,
)

SIZE = 16


def _teacher(path: Path, arch: str = "vit-nano", classes: int = 3) -> Path:
    torch.manual_seed(1)
    model = create_model(arch, num_classes=classes, in_chans=1, image_size=SIZE)
    save_checkpoint(path, make_checkpoint(model))
    return path


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Toy shards (48 train images of 3 classes, 9 test) and an untrained vit-nano teacher."""
    root = tmp_path_factory.mktemp("cakd")
    return {
        "root": root,
        "train": make_toy_shards(root, "train", per_class=16),
        "test": make_toy_shards(root, "test", per_class=3, seed=1),
        "vit": _teacher(root / "vit.pt"),
    }


def _cfg(toy: dict[str, Path], out: Path, **options: Any) -> CakdTrainConfig:
    settings: dict[str, Any] = dict(
        data=str(toy["train"]),
        teacher=f"vit=vit-nano:{toy['vit']}",
        out=str(out),
        model="cnn-nano",
        epochs=1,
        batch_size=16,
        device="cpu",
        threads=1,  # on a busy 2-core machine a second thread mostly spin-waits
        progress=False,
    )
    settings.update(options)
    return CakdTrainConfig(**settings)


# ------------------------------------------------------------------------------ the schedule


def test_multistep_schedule_drops_tenfold_at_each_milestone() -> None:
    cfg = MultiStepSchedule(base_lr=0.1, total_steps=200, warmup_steps=2, milestones=(100, 150))
    values = [lr_at(s, cfg) for s in (0, 1, 2, 99, 100, 149, 150, 199, 500)]
    expected = [0.05, 0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001, 0.001]
    assert values == pytest.approx(expected)


def test_multistep_schedule_keeps_the_cosine_form_and_checks_milestones() -> None:
    # A cosine schedule's saved form (what resume compares) has no new keys.
    assert set(ScheduleConfig.__dataclass_fields__) == {
        "base_lr",
        "total_steps",
        "warmup_steps",
        "min_lr",
    }
    for bad in [(150, 100), (5,), (300,)]:
        with pytest.raises(ValueError, match="milestones"):
            MultiStepSchedule(base_lr=0.1, total_steps=200, warmup_steps=10, milestones=bad)


def test_paper_recipe_is_plain_sgd_with_momentum_and_command_line_wins() -> None:
    cfg = CakdTrainConfig(data="d", teacher="vit=vit-nano:x.pt", out="o", recipe="paper-cifar")
    opt = resolve_optimization(cfg)
    assert (opt.optimizer, opt.lr, opt.weight_decay) == ("sgd", 0.1, 1e-4)
    assert (opt.epochs, opt.batch_size, opt.milestones) == (200, 64, (100, 150))
    assert not opt.nesterov
    optimizer = build_optimizer(
        torch.nn.Linear(3, 2),
        OptimizerConfig(name="sgd", lr=opt.lr, weight_decay=opt.weight_decay, nesterov=False),
    )
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.9, False, 1e-4)

    given = CakdTrainConfig(
        data="d", teacher="t=a:b", out="o", recipe="paper-imagenet", epochs=10, milestones=(0,)
    )
    opt = resolve_optimization(given)
    assert (opt.epochs, opt.milestones, opt.batch_size) == (10, (), 256)
    assert opt.provenance["epochs"]["from"] == "--epochs (command line)"
    assert opt.provenance["batch_size"]["from"].startswith("recipe paper-imagenet")
    with pytest.raises(UserError, match="past the run"):
        resolve_optimization(
            CakdTrainConfig(data="d", teacher="t=a:b", out="o", epochs=5, milestones=(8,))
        )


# -------------------------------------------------------------------------------- the methods


@pytest.mark.parametrize(
    ("method", "multi_view", "terms"),
    [
        ("none", True, {"loss_ce"}),
        ("logit", True, {"loss_ce", "loss_kd"}),
        ("cakd", False, {"loss_ce", "loss_proj1", "loss_attn", "loss_value", "loss_proj2"}),
        (
            "cakd",
            True,
            {"loss_ce", "loss_proj1", "loss_attn", "loss_value", "loss_proj2", "loss_mvg"}
            | {"loss_mad"},
        ),
    ],
)
def test_each_method_trains_an_epoch_and_saves_an_evaluable_student(
    toy: dict[str, Path], tmp_path: Path, method: str, multi_view: bool, terms: set[str]
) -> None:
    out = tmp_path / "run"
    summary = train_cakd(_cfg(toy, out, method=method, multi_view=multi_view, val=str(toy["test"])))
    assert summary["steps"] == 3
    assert terms | {"loss", "top1"} == set(summary["loss"])
    assert all(torch.isfinite(torch.tensor(v)) for v in summary["loss"].values())
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["epoch"] == 1 and "val_top1" in record

    student = create_model("cnn-nano", num_classes=3, in_chans=1, image_size=SIZE)
    for name in ("final.pt", "last.pt"):
        saved = load_checkpoint(out / name)
        # Projectors and discriminator never enter the student's weights.
        assert set(saved["state_dict"]) == set(student.state_dict())
    extra = load_checkpoint(out / "last.pt")["train_state"]["cakd"]
    assert ("projectors" in extra) == (method == "cakd")
    assert ("discriminator" in extra) == (method == "cakd" and multi_view)
    assert "train_state" not in load_checkpoint(out / "final.pt")
    result = evaluate(EvaluateConfig(checkpoint=out / "final.pt", data=str(toy["test"]), threads=1))
    assert result["num_samples"] == 9


@pytest.mark.slow
def test_discriminator_steps_exactly_every_fifth_step(toy: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    updates: list[int] = []
    original = cakd_run.DiscriminatorTrainer.tick

    def spy(self: cakd_run.DiscriminatorTrainer, *args: Any) -> torch.Tensor:
        before = sum(p.detach().sum().item() for p in self.net.parameters())
        loss = original(self, *args)
        after = sum(p.detach().sum().item() for p in self.net.parameters())
        if before != after:
            updates.append(self.clock)
        return loss

    cakd_run.DiscriminatorTrainer.tick = spy  # type: ignore[method-assign]
    try:
        train_cakd(_cfg(toy, out, epochs=2, batch_size=8))  # 12 steps
    finally:
        cakd_run.DiscriminatorTrainer.tick = original  # type: ignore[method-assign]
    assert updates == [5, 10]
    state = load_checkpoint(out / "last.pt")["train_state"]["cakd"]["discriminator"]["optimizer"]
    assert {int(s["step"]) for s in state["state"].values()} == {2}  # Adam's own step count


@pytest.mark.slow
def test_resume_after_a_kill_mid_epoch_equals_an_uninterrupted_run(
    toy: dict[str, Path], tmp_path: Path
) -> None:
    full = tmp_path / "full"
    train_cakd(_cfg(toy, full, epochs=2, save_every=2))

    class Killed(Exception):
        pass

    calls = {"n": 0}
    original = cakd_run.CakdStep.__call__

    def kill_at_fifth(self: cakd_run.CakdStep, model: Any, batch: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 5:  # after the save at step 4, in the middle of epoch 2
            raise Killed
        return original(self, model, batch)

    part = tmp_path / "part"
    cakd_run.CakdStep.__call__ = kill_at_fifth  # type: ignore[method-assign]
    try:
        with pytest.raises(Killed):
            train_cakd(_cfg(toy, part, epochs=2, save_every=2))
    finally:
        cakd_run.CakdStep.__call__ = original  # type: ignore[method-assign]
    state = load_checkpoint(part / "last.pt")["train_state"]
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 1, 4)
    train_cakd(_cfg(toy, part, epochs=2, save_every=2, resume=True))

    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(part / "last.pt")
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0)
    for part_name in ("projectors", "discriminator"):
        flat_a = _flat(a["train_state"]["cakd"][part_name])
        flat_b = _flat(b["train_state"]["cakd"][part_name])
        assert flat_a.keys() == flat_b.keys()
        for key, value in flat_a.items():
            torch.testing.assert_close(flat_b[key], value, rtol=0, atol=0)


def _flat(tree: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    if isinstance(tree, dict):
        out: dict[str, torch.Tensor] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}/{key}"))
        return out
    if isinstance(tree, list | tuple):
        out = {}
        for i, value in enumerate(tree):
            out.update(_flat(value, f"{prefix}/{i}"))
        return out
    return {prefix: torch.tensor(float(tree))} if isinstance(tree, int | float) else {}


def test_resume_refuses_another_method(toy: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    train_cakd(_cfg(toy, out, method="none"))
    with pytest.raises(UserError, match=r"cannot resume .*: it was trained with method="):
        train_cakd(_cfg(toy, out, method="logit", resume=True))


# ---------------------------------------------------------------------------------- bad input


def _one_line_error(args: list[str]) -> str:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("civt-pipe: error:"), result.output
    return lines[0]


def _cli(toy: dict[str, Path], out: Path, teacher: str, *extra: str) -> list[str]:
    return [
        "train-cakd",
        "--data",
        str(toy["train"]),
        "--teacher",
        teacher,
        "--out",
        str(out),
        "--model",
        "cnn-nano",
        "--device",
        "cpu",
        "--threads",
        "1",
        *extra,
    ]


def test_bad_input_is_one_line_each(toy: dict[str, Path], tmp_path: Path) -> None:
    cnn = _teacher(tmp_path / "cnn.pt", arch="cnn-nano")
    line = _one_line_error(_cli(toy, tmp_path / "a", f"cnn=cnn-nano:{cnn}"))
    assert "ViT" in line or "vit" in line
    line = _one_line_error(_cli(toy, tmp_path / "b", f"vit=vit-nano:{toy['vit']}", "--block", "99"))
    assert "99" in line
    line = _one_line_error(
        _cli(toy, tmp_path / "c", f"vit=vit-nano:{toy['vit']}", "--model", "civt-nano")
    )
    assert "feature map" in line
    five = _teacher(tmp_path / "five.pt", classes=5)
    line = _one_line_error(_cli(toy, tmp_path / "d", f"vit=vit-nano:{five}"))
    assert "5" in line and "3" in line
    assert not any((tmp_path / name).exists() for name in "abcd")


@pytest.mark.parametrize(
    ("projectors", "multi_view", "terms", "modules"),
    [
        ("pca", False, {"loss_proj1", "loss_attn", "loss_value"}, {"pca"}),
        ("gl", False, {"loss_proj2"}, {"gl"}),
        ("gl", True, {"loss_proj2", "loss_mvg", "loss_mad"}, {"gl"}),
        ("both", False, {"loss_proj1", "loss_attn", "loss_value", "loss_proj2"}, {"pca", "gl"}),
    ],
)
def test_each_projector_ablation_trains_a_step(
    toy: dict[str, Path],
    tmp_path: Path,
    projectors: str,
    multi_view: bool,
    terms: set[str],
    modules: set[str],
) -> None:
    # The paper's Fig. 3a: PCA only, GL only, both. One step of 48 images.
    out = tmp_path / "run"
    summary = train_cakd(
        _cfg(toy, out, projectors=projectors, multi_view=multi_view, batch_size=48)
    )
    assert summary["steps"] == 1
    assert set(summary["loss"]) == terms | {"loss", "loss_ce", "top1"}
    assert all(torch.isfinite(torch.tensor(v)) for v in summary["loss"].values())
    saved = load_checkpoint(out / "last.pt")["train_state"]["cakd"]["projectors"]
    assert {key.split(".")[0] for key in saved} == modules


def test_new_options_reach_the_parts_and_bad_ones_are_one_line(
    toy: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    train_cakd(_cfg(toy, out, batch_size=48, gl_group=2, disc_widths=(32, 16), view_mask_ratio=0.5))
    state = load_checkpoint(out / "last.pt")["train_state"]["cakd"]
    assert state["projectors"]["gl.weight"].shape[0] == 4  # vit-nano's 4x4 grid in 2x2 tiles
    assert state["discriminator"]["net"]["net.0.weight"].shape == (32, 96)
    assert state["discriminator"]["net"]["net.2.weight"].shape == (16, 32)
    with pytest.raises(UserError, match=r"^--projectors pca leaves no projected tokens"):
        _cfg(toy, out, projectors="pca")
    with pytest.raises(UserError, match=r"^--disc-width: the discriminator has two"):
        _cfg(toy, out, disc_widths=(8,))
    with pytest.raises(UserError, match=r"^--student-layer body\.nope is not a module"):
        train_cakd(_cfg(toy, tmp_path / "bad", student_layer="body.nope"))


def test_evaluate_reports_the_transferability_of_a_cakd_student(
    toy: dict[str, Path], tmp_path: Path
) -> None:
    from civt_pipe.pipeline.cakd.transferability import prediction_cosine

    out = tmp_path / "run"
    train_cakd(_cfg(toy, out, batch_size=48, multi_view=False))
    base = dict(checkpoint=out / "final.pt", data=str(toy["test"]), device="cpu", threads=1)
    result = evaluate(EvaluateConfig(**base))
    # By hand: the cosine of the two models' class probabilities, image by image.
    from civt_pipe.pipeline.data.shard_set import resolve_complete_shards
    from civt_pipe.pipeline.data.streams import eval_batches
    from civt_pipe.pipeline.models.checkpoint import model_from_checkpoint

    vit, _ = model_from_checkpoint(toy["vit"], device=torch.device("cpu"))
    student, _ = model_from_checkpoint(out / "final.pt", device=torch.device("cpu"))
    shards = resolve_complete_shards(str(toy["test"]))
    cosines = []
    with torch.no_grad():
        for batch in eval_batches(shards, image_size=SIZE, batch_size=256):
            cosines.append(prediction_cosine(vit(batch.images), student(batch.images)))
    expected = float(torch.cat(cosines).mean())
    assert 0 < result["transferability"] <= 1
    assert result["transferability"] == pytest.approx(expected, rel=1e-5)
    noisy = evaluate(EvaluateConfig(**base, noise=0.5))
    assert noisy["transferability"] != pytest.approx(result["transferability"])
    # A checkpoint that train-cakd did not write has none.
    assert "transferability" not in evaluate(EvaluateConfig(**{**base, "checkpoint": toy["vit"]}))
    # Its teacher gone: the accuracy still comes, with a warning instead of the cosine.
    (toy["root"] / "moved.pt").write_bytes(toy["vit"].read_bytes())
    toy["vit"].unlink()
    try:
        assert "transferability" not in evaluate(EvaluateConfig(**base))
    finally:
        (toy["root"] / "moved.pt").rename(toy["vit"])


# -------------------------------------------------------------------------------- --noise


def test_evaluate_noise_is_seeded_and_changes_the_outputs(
    toy: dict[str, Path], tmp_path: Path
) -> None:
    ckpt = _teacher(tmp_path / "cnn.pt", arch="cnn-nano")
    base = dict(checkpoint=ckpt, data=str(toy["test"]), device="cpu", threads=1)
    clean = evaluate(EvaluateConfig(**base))
    assert "noise" not in clean
    assert evaluate(EvaluateConfig(**base, noise=0.0)) == clean
    from civt_pipe.pipeline.stages.evaluate.noise import GaussianNoise

    model = create_model("cnn-nano", num_classes=3, in_chans=1, image_size=SIZE).eval()
    x = torch.full((4, 1, SIZE, SIZE), 0.5)
    a = GaussianNoise(model, std=0.3, seed=7)
    b = GaussianNoise(model, std=0.3, seed=7)
    c = GaussianNoise(model, std=0.3, seed=8)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
        assert not torch.equal(a(x), c(x))
        assert not torch.equal(model(x), c(x))
    noisy = evaluate(EvaluateConfig(**base, noise=0.5, noise_seed=3))
    assert noisy == evaluate(EvaluateConfig(**base, noise=0.5, noise_seed=3))
    assert noisy["noise"] == 0.5
    with pytest.raises(UserError, match="--noise must be at least 0"):
        EvaluateConfig(checkpoint=ckpt, data="d", noise=-0.1)


@pytest.mark.slow
def test_two_process_ddp_run_trains_with_the_discriminator_and_saves_once(
    toy: dict[str, Path], tmp_path: Path
) -> None:
    """Under torchrun the student, projectors and (every 5th step, gradients averaged by hand)
    the discriminator train on both ranks; rank 0 alone reports and saves."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    env = {**os.environ, "CIVT_PIPE_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    cmd += ["-m", "civt_pipe.cli", "train-cakd", "--data", str(toy["train"])]
    cmd += ["--teacher", f"vit=vit-nano:{toy['vit']}", "--model", "cnn-nano", "--out", str(out)]
    cmd += ["--epochs", "5", "--batch-size", "16", "--device", "cpu", "--threads", "1", "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(reports) == 1 and reports[0]["epochs"] == 5, done.stdout
    # --batch-size is per rank: 2 ranks × 16 = 32 images per optimizer step (48 // 32 = 1
    # step per epoch, 5 in all: the discriminator steps once).
    assert reports[0]["images_per_step"] == 32 and reports[0]["steps"] == 5
    last = load_checkpoint(out / "last.pt")
    assert last["train_state"]["identity"]["world_size"] == 2
    steps = last["train_state"]["global_step"]
    disc = last["train_state"]["cakd"]["discriminator"]["optimizer"]
    assert {int(s["step"]) for s in disc["state"].values()} == {steps // 5}
    assert all(
        torch.isfinite(v).all() for v in load_checkpoint(out / "final.pt")["state_dict"].values()
    )


def test_tensorboard_and_config_file_provenance(toy: dict[str, Path], tmp_path: Path) -> None:
    """--tensorboard writes event files in RUN_DIR/tb; a value from --config says so in
    config.json's hyperparameters, one from the command line says that."""
    config = tmp_path / "run.toml"
    config.write_text('method = "none"\nlr = 0.002\n')
    out = tmp_path / "run"
    args = ["train-cakd", "--config", str(config), "--data", str(toy["train"])]
    args += ["--teacher", f"vit=vit-nano:{toy['vit']}", "--model", "cnn-nano", "--out", str(out)]
    args += ["--epochs", "1", "--batch-size", "16", "--device", "cpu", "--threads", "1"]
    result = CliRunner().invoke(app, [*args, "--tensorboard"])
    assert result.exit_code == 0, result.output
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tb").iterdir())
    saved = json.loads((out / "config.json").read_text())
    assert saved["sources"]["lr"] == "config-file" and saved["sources"]["epochs"] == "command-line"
    hyper = saved["hyperparameters"]
    assert hyper["lr"]["from"] == "--lr (config file)"
    assert hyper["epochs"]["from"] == "--epochs (command line)"
