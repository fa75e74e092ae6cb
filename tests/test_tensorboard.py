"""``--tensorboard``: the loop's metric records as TensorBoard scalars, read back with
TensorBoard's own ``EventAccumulator``.

Tiny runs (toy shards, nano models, one thread); the sink alone shows what a resume does.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing import event_accumulator
from toy_shards import dump_toy_store, make_toy_shards, make_toy_teacher
from typer.testing import CliRunner

from civt_pipe.cli.app import app
from civt_pipe.pipeline.stages.student.config import StudentTrainConfig
from civt_pipe.pipeline.stages.student.run import train_student
from civt_pipe.pipeline.train import tensorboard
from civt_pipe.pipeline.train.tensorboard import TensorBoardSink, scalars


def _read(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` as TensorBoard shows them."""
    acc = event_accumulator.EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_scalars_are_the_records_numbers_tagged_by_kind() -> None:
    step = {"kind": "step", "epoch": 0, "step": 5, "lr": 0.1, "loss": 2.0, "flag": True}
    assert scalars(step) == {"step/lr": 0.1, "step/loss": 2.0}
    # A teacher's epoch record has no kind; a figure that is not finite is left out.
    assert scalars({"epoch": 1, "step": 9, "val_top1": 0.5, "x": float("nan")}) == {
        "epoch/val_top1": 0.5
    }


def test_a_resumed_sink_hides_what_the_killed_run_wrote_past_its_checkpoint(
    tmp_path: Path,
) -> None:
    with TensorBoardSink(tmp_path, resumed_step=None) as sink:
        for step in range(1, 6):  # killed after step 5, last checkpoint at step 3
            sink.write({"kind": "step", "step": step, "loss": float(step)})
    with TensorBoardSink(tmp_path, resumed_step=3) as sink:
        for step in range(4, 7):
            sink.write({"kind": "step", "step": step, "loss": 10.0 * step})
    assert _read(tmp_path)["step/loss"] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0), (6, 60.0),
    ]  # fmt: skip
    # A fresh run starts a clean directory.
    with TensorBoardSink(tmp_path, resumed_step=None) as sink:
        sink.write({"kind": "step", "step": 1, "loss": 7.0})
    assert _read(tmp_path)["step/loss"] == [(1, 7.0)]


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tensorboard")
    train = make_toy_shards(root, "train", per_class=8)
    test = make_toy_shards(root, "test", per_class=3, seed=1)
    teacher = make_toy_teacher(root / "cnn.pt")
    store = dump_toy_store(train, teacher, root / "store.zarr", views=1, aug="small", threads=1)
    return {"train": train, "test": test, "store": store}


def test_train_teacher_writes_its_epoch_records_to_the_run_dir(
    toy: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "cnn"
    args = ["train-teacher", "--arch", "cnn-nano", "--data", str(toy["train"])]
    args += ["--val", str(toy["test"]), "--out", str(out), "--epochs", "2", "--batch-size", "8"]
    args += ["--device", "cpu", "--workers", "0", "--threads", "1", "--tensorboard"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    board = _read(out / "tb")
    for tag in ("loss", "top1", "lr", "images_per_s", "val_top1"):
        assert [step for step, _ in board[f"epoch/{tag}"]] == [3, 6], tag
    sources = json.loads((out / "config.json").read_text())["sources"]
    assert sources["tensorboard"] == "command-line" and sources["seed"] == "default"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [v for _, v in board["epoch/loss"]] == pytest.approx([r["loss"] for r in records])


def test_train_student_writes_step_and_epoch_records_to_the_run_dir(
    toy: dict[str, Path], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    settings: dict[str, Any] = dict(epochs=1, batch_size=8, warmup_epochs=0, log_every=2)
    train_student(
        StudentTrainConfig(
            data=str(toy["train"]),
            store=str(toy["store"]),
            val=str(toy["test"]),
            out=str(run),
            device="cpu",
            threads=1,
            progress=False,
            tensorboard=True,
            **settings,
        )
    )
    board = _read(run / "tb")
    for tag in ("loss", "lr", "images_per_s"):
        assert [step for step, _ in board[f"step/{tag}"]] == [2, 3], tag
    assert any(tag.startswith("step/") and "cnn" in tag for tag in board), sorted(board)
    assert any(tag.startswith("epoch/val_") for tag in board), sorted(board)


def test_without_the_extra_the_flag_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "tensorboard" else real(name, *args)

    monkeypatch.setattr(tensorboard.importlib.util, "find_spec", find_spec)
    args = ["train-student", "--data", "d", "--store", "s", "--out", "o", "--tensorboard"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        "civt-pipe: error: --tensorboard needs the tensorboard package: pip install 'civt-pipe[tb]'"
    )
