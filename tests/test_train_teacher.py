"""train-teacher: checkpoint contents, metrics and config files, exact resume, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from toy_shards import make_toy_shards
from typer.testing import CliRunner

from civt_pipe.cli.app import app
from civt_pipe.pipeline.data.make_shards import MakeShardsConfig, make_shards
from civt_pipe.pipeline.models.checkpoint import load_checkpoint, model_from_checkpoint
from civt_pipe.pipeline.runtime.errors import UserError
from civt_pipe.pipeline.stages.teacher.config import TeacherTrainConfig, recipe_family
from civt_pipe.pipeline.stages.teacher.run import train_teacher


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("toy")
    return make_toy_shards(root, "train"), make_toy_shards(root, "test", per_class=6, seed=1)


def _cfg(toy: tuple[Path, Path], out: Path, **kw: object) -> TeacherTrainConfig:
    settings: dict[str, object] = {
        "arch": "cnn-nano",
        "data": str(toy[0]),
        "val": str(toy[1]),
        "out": out,
        "epochs": 2,
        "batch_size": 16,
        "workers": 0,
        "device": "cpu",
        "threads": 1,  # the small model is fastest single-threaded on a shared CPU
    }
    settings.update(kw)
    return TeacherTrainConfig(**settings)  # type: ignore[arg-type]


def test_recipe_families() -> None:
    assert recipe_family("cnn-nano") == recipe_family("inn-nano") == "nano"
    assert recipe_family("resnet50") == "resnet"
    assert recipe_family("rednet26") == "rednet"
    assert recipe_family("regnet_y_400mf") == "regnet"


def test_short_run_writes_a_loadable_checkpoint_metrics_and_config(
    toy: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "teacher"
    result = train_teacher(_cfg(toy, out))
    ckpt = load_checkpoint(out / "last.pt")
    assert "train_state" not in load_checkpoint(out)  # the run directory means its final.pt
    assert ckpt["kind"] == "teacher" and ckpt["arch"] == "cnn-nano"
    assert ckpt["num_classes"] == 3 and ckpt["class_names"] == ["bright", "dark", "mid"]
    assert ckpt["image_size"] == 16 and ckpt["in_chans"] == 1
    assert len(ckpt["mean"]) == 1 and 0 < ckpt["mean"][0] < 1
    assert ckpt["metrics"]["val_top1"] == result["val_top1"]
    assert 0.0 <= result["val_top1"] <= 1.0
    # The JSON names the record's training loss and top-1 as such.
    assert result["train_loss"] == ckpt["metrics"]["loss"] and "top1" not in result
    assert ckpt["train_state"]["epoch"] == 2 and ckpt["train_state"]["global_step"] == 2 * 3

    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    assert {"kind", "loss", "top1", "lr", "images_per_s", "val_top1", "val_top5"} <= set(lines[0])

    config = json.loads((out / "config.json").read_text())
    assert config["optimizer"] == "adamw" and config["image_size"] == 16
    # The nano recipe's 3.2e-2 per 512 images, at a global batch of 16.
    assert config["lr"] == pytest.approx(3.2e-2 * 16 / 512)
    assert (out / "final.safetensors").is_file()
    assert config["hflip"] == 0.0  # 8 px glyph-like source: no flipping

    model, meta = model_from_checkpoint(out)
    logits = model(torch.rand(2, 1, 16, 16))
    assert logits.shape == (2, 3) and meta["kind"] == "teacher"


def test_resume_after_an_interruption_matches_an_uninterrupted_run(
    toy: tuple[Path, Path], tmp_path: Path
) -> None:
    full = tmp_path / "full"
    train_teacher(_cfg(toy, full, epochs=3))

    class Killed(Exception):
        pass

    def kill_after_first(epoch: int, _: dict[str, object]) -> None:
        if epoch == 1:
            raise Killed

    part = tmp_path / "part"
    with pytest.raises(Killed):
        train_teacher(_cfg(toy, part, epochs=3), on_epoch_end=kill_after_first)
    assert load_checkpoint(part / "last.pt")["train_state"]["epoch"] == 1
    train_teacher(_cfg(toy, part, epochs=3, resume=True))

    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(part / "last.pt")
    assert b["train_state"]["epoch"] == 3
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0)
    lines = (part / "metrics.jsonl").read_text().splitlines()
    epochs = [json.loads(line)["epoch"] for line in lines]
    assert epochs == [1, 2, 3]


@pytest.mark.parametrize(
    ("option", "value"),
    [("optimizer", "sgd"), ("lr", 0.5), ("shuffle_buffer", 7), ("epochs", 4)],
)
def test_resume_refuses_options_that_change_the_result(
    toy: tuple[Path, Path], tmp_path: Path, option: str, value: object
) -> None:
    out = tmp_path / "t"
    train_teacher(_cfg(toy, out, epochs=1))
    changed = {"epochs": 1, option: value}
    with pytest.raises(UserError, match=f"cannot resume .*: it was trained with {option}="):
        train_teacher(_cfg(toy, out, resume=True, **changed))


def test_existing_output_needs_resume_or_overwrite(toy: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "t"
    out.mkdir()
    (out / "last.pt").write_bytes(b"not a checkpoint")
    result = CliRunner().invoke(
        app,
        ["train-teacher", "--arch", "cnn-nano", "--data", str(toy[0]), "--out", str(out)],
    )
    assert result.exit_code == 2
    assert "already holds a run; pass --resume" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_init_loads_weights_of_our_checkpoint(toy: tuple[Path, Path], tmp_path: Path) -> None:
    first = tmp_path / "first"
    train_teacher(_cfg(toy, first, epochs=1))
    second = tmp_path / "second"  # --init takes a run directory (its final.pt) or a file
    # --lr tiny: after one step the weights are still (almost) the initial ones.
    train_teacher(_cfg(toy, second, epochs=1, init=first, lr=1e-9, warmup_epochs=0))
    a = load_checkpoint(first)["state_dict"]
    b = load_checkpoint(second)["state_dict"]
    torch.testing.assert_close(b["body.fc.weight"], a["body.fc.weight"], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--arch", "resnet7"], "unknown architecture 'resnet7'"),
        (["--arch", "civt-nano"], "not a teacher"),
        (["--arch", "cnn-nano", "--optimizer", "lamb"], "--optimizer must be one of"),
        (["--arch", "cnn-nano", "--epochs", "0"], "--epochs must be at least 1"),
    ],
)
def test_cli_errors_are_one_line(
    toy: tuple[Path, Path], tmp_path: Path, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(
        app, ["train-teacher", *args, "--data", str(toy[0]), "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_cli_json_reports_the_run(toy: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "cli"
    result = CliRunner().invoke(
        app,
        [
            "train-teacher",
            "--arch",
            "inn-nano",
            "--data",
            str(toy[0]),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--batch-size",
            "24",
            "--workers",
            "0",
            "--threads",
            "1",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["checkpoint"] == str(out / "final.pt") and report["epochs"] == 1
    assert "val_top1" not in report  # no --val given
    assert (out / "final.pt").is_file()


@pytest.mark.slow
def test_cnn_nano_reaches_95_percent_on_digits(tmp_path: Path) -> None:
    for split in ("train", "test"):
        make_shards(MakeShardsConfig(source="digits", out_dir=tmp_path / split, split=split))
    result = train_teacher(
        TeacherTrainConfig(
            arch="cnn-nano",
            data=str(tmp_path / "train"),
            val=str(tmp_path / "test"),
            out=tmp_path / "cnn",
            epochs=10,  # the quickstart's teacher epochs; the recipe's other values as they are
            device="cpu",
            threads=1,
        )
    )
    assert result["val_top1"] >= 0.95, result


@pytest.mark.slow
def test_two_process_ddp_run_writes_one_checkpoint_and_one_report(
    toy: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "CIVT_PIPE_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,  # torchrun, as a module: a venv need not have the script
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "-m",
        "civt_pipe.cli",
        "train-teacher",
        "--arch",
        "cnn-nano",
        "--data",
        str(toy[0]),
        "--val",
        str(toy[1]),
        "--out",
        str(out),
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--workers",
        "1",
        "--device",
        "cpu",
        "--json",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(reports) == 1 and reports[0]["epochs"] == 2
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["config"]["world_size"] == 2 and ckpt["train_state"]["epoch"] == 2
    # --batch-size is per rank: 2 ranks × 16 = 32 images per optimizer step. Shards of 20, 20
    # and 8 go whole to the 2 ranks (28 / 20 samples): 48 // 32 = 1 step per epoch.
    assert reports[0]["images_per_step"] == 32
    assert ckpt["config"]["steps_per_epoch"] == 1 and ckpt["train_state"]["global_step"] == 2
