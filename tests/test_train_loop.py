"""The one loop as a unit: a step, record cadence, checkpoints, and exact mid-epoch resume.

A toy task (a dropout MLP on batches keyed by epoch and step) stands in for a stage, so the loop
runs in milliseconds without data files.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from civt_pipe.pipeline.runtime.distributed import DistContext
from civt_pipe.pipeline.runtime.errors import UserError
from civt_pipe.pipeline.train.checkpointer import Checkpointer
from civt_pipe.pipeline.train.loop import (
    PLATEAU_SINCE,
    Diverged,
    EpochSummary,
    LoopConfig,
    Plateau,
    StepResult,
    first_non_finite,
    fit,
    train_step,
)
from civt_pipe.pipeline.train.schedule import ScheduleConfig, lr_at
from civt_pipe.pipeline.train.steps import ClassificationStep, DistillationStep

CPU = torch.device("cpu")
STEPS, EPOCHS = 4, 2


class Killed(Exception):
    pass


@dataclass
class ToyTask:
    kill_at: tuple[int, int] | None = None
    poison_at: tuple[int, int] | None = None
    """(epoch, step) whose images are NaN: that step's loss, and then the weights, are NaN."""
    val_by_epoch: list[float] | None = None
    """The validation top-1 after each epoch (default: 0.5 every epoch)."""
    seen: list[tuple[int, int]] = field(default_factory=list)

    def batches(self, epoch: int, start_step: int) -> Iterator[tuple[Tensor, Tensor]]:
        for step in range(start_step, STEPS):
            if (epoch, step) == self.kill_at:
                raise Killed
            gen = torch.Generator().manual_seed(1000 * epoch + step)
            self.seen.append((epoch, step))
            images = torch.randn(5, 4, generator=gen)
            if (epoch, step) == self.poison_at:
                images = torch.full_like(images, float("nan"))
            yield images, torch.randint(0, 3, (5,), generator=gen)

    def step(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> StepResult:
        return ClassificationStep(device=CPU)(model, batch)

    def validate(self, model: nn.Module) -> dict[str, float]:
        if self.val_by_epoch is None:
            return {"top1": 0.5}
        return {"top1": self.val_by_epoch[self.seen[-1][0]]}

    def checkpoint_metrics(self, summary: EpochSummary | None) -> dict[str, Any]:
        return {"val": summary.val if summary else {}}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.5), nn.Linear(16, 3))


def _make(net: nn.Module, state: dict[str, Any] | None, metrics: Mapping[str, Any]) -> dict:
    ckpt = {
        "format": "civt-pipe",
        "version": 1,
        "kind": "teacher",
        "arch": "toy",
        "model_args": {},
        "state_dict": net.state_dict(),
        "metrics": dict(metrics),
        "config": {},
    }
    if state is not None:
        ckpt["train_state"] = state
    return ckpt


def _run(
    out: Path,
    task: ToyTask,
    *,
    save_every: int = 0,
    resume: bool = False,
    log_every: int = 2,
    epochs: int = EPOCHS,
    until_plateau: int | None = None,
    plateau_metric: str = "top1",
    precision: Any = None,
) -> tuple[nn.Module, Any]:
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    schedule = ScheduleConfig(base_lr=1e-2, total_steps=STEPS * epochs, warmup_steps=2)
    checkpointer = Checkpointer(
        path=out / "last.pt",
        make=_make,
        kind="teacher",
        command="toy",
        identity={},
        schedule={"base_lr": 1e-2},
    )
    state = None
    if resume:
        state = checkpointer.restore(checkpointer.load(), model, optimizer)
    cfg = LoopConfig(
        epochs=epochs,
        steps_per_epoch=STEPS,
        schedule=schedule,
        seed=7,
        metrics_file=out / "metrics.jsonl",
        log_every=log_every,
        save_every=save_every,
        final=out / "final.pt",
        progress=False,
        until_plateau=until_plateau,
        plateau_metric=plateau_metric,
        **({"precision": precision} if precision is not None else {}),
    )
    result = fit(
        task, model, optimizer, cfg, checkpointer, ctx=DistContext(), device=CPU, resume_from=state
    )
    return model, result


def _records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_fit_logs_at_its_cadence_and_checkpoints_each_epoch(tmp_path: Path) -> None:
    _, result = _run(tmp_path, ToyTask())
    assert result.global_step == STEPS * EPOCHS and result.images == 5 * STEPS * EPOCHS
    records = _records(tmp_path)
    steps = [r["step"] for r in records if r["kind"] == "step"]
    assert steps == [2, 4, 6, 8]
    assert {"loss", "top1", "lr", "images_per_s", "epoch"} <= set(records[0])
    # One record format for every trainer: epochs counted from 1 in step and epoch records.
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]
    assert [r["epoch"] for r in records if r["kind"] == "step"] == [1, 1, 2, 2]
    epoch_keys = {"kind", "epoch", "step", "lr", "images_per_s", "epoch_seconds", "loss", "top1"}
    assert [set(r) for r in records if r["kind"] == "epoch"] == [epoch_keys | {"val_top1"}] * 2
    state = torch.load(tmp_path / "last.pt", weights_only=True)["train_state"]
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (2, 0, 8)
    final = torch.load(tmp_path / "final.pt", weights_only=True)
    assert "train_state" not in final and final["metrics"] == {"val": {"top1": 0.5}}
    assert result.last_epoch.val == {"top1": 0.5}


def test_resume_inside_an_epoch_reaches_the_uninterrupted_weights(tmp_path: Path) -> None:
    whole, _ = _run(tmp_path / "whole", ToyTask())
    killed = tmp_path / "killed"
    with pytest.raises(Killed):
        _run(killed, ToyTask(kill_at=(1, 3)), save_every=3)
    saved = torch.load(killed / "last.pt", weights_only=True)["train_state"]
    assert (saved["epoch"], saved["step_in_epoch"], saved["global_step"]) == (1, 2, 6)
    task = ToyTask()
    resumed, result = _run(killed, task, save_every=3, resume=True)
    assert task.seen == [(1, 2), (1, 3)]  # only what the killed run had not trained on
    assert result.global_step == STEPS * EPOCHS
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    # Records past the checkpoint (step 6) were dropped before the resumed run wrote again.
    steps = [(r["kind"], r["step"]) for r in _records(killed)]
    assert steps == [(r["kind"], r["step"]) for r in _records(tmp_path / "whole")]


class _ScaledFp32:
    """fp32 numerics with fp16's gradient scaler (CPU): the scaler's state without a GPU."""

    precision = "fp32"

    def autocast(self) -> Any:
        return contextlib.nullcontext()

    def grad_scaler(self) -> torch.amp.GradScaler:
        # Growth every 2 steps: the scale of an uninterrupted run moves while it trains.
        return torch.amp.GradScaler("cpu", init_scale=4.0, growth_interval=2)


def test_resumed_run_continues_the_gradient_scaler_where_it_stopped(tmp_path: Path) -> None:
    """The fp16 loss scale is part of last.pt: a resumed run scales (and would skip) exactly the
    steps an uninterrupted one does, instead of re-calibrating from the initial scale."""
    _run(tmp_path / "whole", ToyTask(), precision=_ScaledFp32())
    killed = tmp_path / "killed"
    with pytest.raises(Killed):
        _run(killed, ToyTask(kill_at=(1, 3)), save_every=3, precision=_ScaledFp32())
    saved = torch.load(killed / "last.pt", weights_only=True)["train_state"]["scaler"]
    assert saved["scale"] > 4.0  # grown before the kill
    _run(killed, ToyTask(), save_every=3, resume=True, precision=_ScaledFp32())
    whole = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["train_state"]
    resumed = torch.load(killed / "last.pt", weights_only=True)["train_state"]
    assert resumed["scaler"] == whole["scaler"]


def test_train_step_updates_the_weights_and_returns_the_terms() -> None:
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = (torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]))
    result = train_step(model, optimizer, ClassificationStep(device=CPU), batch, lr=0.1)
    assert set(result.terms) == {"loss", "top1"} and result.batch_size == 5
    assert optimizer.param_groups[0]["lr"] == 0.1
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


class _TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        z = self.body(x)
        return {"cls": z, "cnn": 2 * z}


def _student_batch() -> SimpleNamespace:
    return SimpleNamespace(images=torch.randn(2, 4), label_targets=torch.eye(3)[[0, 2]])


def test_distillation_step_reports_every_loss_part() -> None:
    step = DistillationStep(
        targets=lambda batch, images: {"cnn": torch.full((2, 3), 1 / 3)},
        taus={"cnn": 2.0},
        lambdas={"cnn": 0.5},
        device=CPU,
    )
    result = step(_TwoHeads(), _student_batch())
    assert set(result.terms) == {"loss", "loss_cls", "loss_kd_cnn"}
    expected = result.terms["loss_cls"] + 0.5 * result.terms["loss_kd_cnn"]
    torch.testing.assert_close(result.loss, expected)


def test_without_distillation_no_teacher_target_is_computed() -> None:
    def targets(batch: Any, images: Tensor) -> dict[str, Tensor]:
        raise AssertionError("token mode none must not compute teacher targets")

    step = DistillationStep(
        targets=targets, taus={"cnn": 1.0}, lambdas={"cnn": 1.0}, device=CPU, distill=False
    )
    result = step(_TwoHeads(), _student_batch())
    assert set(result.terms) == {"loss", "loss_cls"}
    torch.testing.assert_close(result.loss, result.terms["loss_cls"])


def _strict_records(out: Path) -> list[dict[str, Any]]:
    """The metrics file parsed as strict JSON (NaN and Infinity refused)."""

    def refuse(word: str) -> Any:
        raise AssertionError(f"metrics.jsonl holds {word}")

    text = (out / "metrics.jsonl").read_text()
    return [json.loads(line, parse_constant=refuse) for line in text.splitlines()]


def _saved_step(out: Path) -> int:
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())
    return int(ckpt["train_state"]["global_step"])


def test_a_nan_loss_stops_the_run_naming_step_and_term_and_keeps_the_last_checkpoint(
    tmp_path: Path,
) -> None:
    # Global step 7 (epoch 1, step 2) is poisoned; checkpoints at 3, 4 (epoch end), 6.
    with pytest.raises(Diverged) as caught:
        _run(tmp_path, ToyTask(poison_at=(1, 2)), save_every=3)
    message = str(caught.value)
    assert isinstance(caught.value, UserError) and "\n" not in message
    assert "step 7 (epoch 2)" in message and "loss=nan" in message, message
    assert f"{tmp_path / 'last.pt'} keeps step 6" in message, message
    assert _saved_step(tmp_path) == 6  # the poisoned state was never saved
    assert not (tmp_path / "final.pt").exists()
    assert [r["step"] for r in _strict_records(tmp_path)] == [2, 4, 4, 6]


def test_a_nan_loss_between_syncs_is_caught_at_the_epoch_end(tmp_path: Path) -> None:
    # No step records and no mid-epoch checkpoints: the epoch end is the only sync.
    with pytest.raises(Diverged, match=r"step 6 \(epoch 2\): loss=nan"):
        _run(tmp_path, ToyTask(poison_at=(1, 1)), log_every=0)
    assert _saved_step(tmp_path) == 4  # epoch 0's checkpoint; epoch 1's was refused
    assert [r["kind"] for r in _strict_records(tmp_path)] == ["epoch"]


def test_a_nan_loss_before_any_checkpoint_says_none_was_written(tmp_path: Path) -> None:
    with pytest.raises(Diverged, match="no checkpoint of this run was written"):
        _run(tmp_path, ToyTask(poison_at=(0, 0)))
    assert not (tmp_path / "last.pt").exists()


def test_first_non_finite_finds_the_first_bad_step_and_its_terms() -> None:
    ok = torch.tensor([1.0, 0.5], dtype=torch.float64)
    window = [ok, torch.tensor([1.0, float("inf")]), torch.tensor([float("nan")] * 2)]
    assert first_non_finite(window) == (1, [1])
    assert first_non_finite([ok, ok]) is None
    assert first_non_finite([]) is None


# ------------------------------------------------------------------------- --until-plateau

PLATEAU_VALS = [0.5, 0.6, 0.6, 0.55, 0.7, 0.8]
"""Best after epoch 2 (0.6); epochs 3 (equal: no progress) and 4 do not improve on it."""


def test_plateau_counts_epochs_since_a_strict_improvement() -> None:
    state = Plateau()
    seen = []
    for value in PLATEAU_VALS:
        state = state.after(value)
        seen.append((state.best, state.since, state.stops(2)))
    assert seen == [
        (0.5, 0, False),
        (0.6, 0, False),
        (0.6, 1, False),
        (0.6, 2, True),
        (0.7, 0, False),
        (0.8, 0, False),
    ]
    assert not Plateau().stops(1) and not Plateau(0.9, 50).stops(None)


def test_until_plateau_stops_keeping_the_schedule_laid_out_for_all_epochs(tmp_path: Path) -> None:
    task = ToyTask(val_by_epoch=PLATEAU_VALS)
    _, result = _run(tmp_path, task, epochs=6, until_plateau=2)
    assert result.stopped_at == 4 and result.global_step == 4 * STEPS
    epochs = [r for r in _records(tmp_path) if r["kind"] == "epoch"]
    assert [(r["epoch"], r[PLATEAU_SINCE]) for r in epochs] == [(1, 0), (2, 0), (3, 1), (4, 2)]
    assert (tmp_path / "final.pt").is_file()
    # The last step ran at the 6-epoch cosine's rate for its step: stopping did not squeeze it.
    last_step = [r for r in _records(tmp_path) if r["kind"] == "step"][-1]
    schedule = ScheduleConfig(base_lr=1e-2, total_steps=STEPS * 6, warmup_steps=2)
    assert last_step["lr"] == pytest.approx(lr_at(4 * STEPS - 1, schedule))
    assert last_step["lr"] > 1e-3  # far from the end of the decay
    # Without the option the same run trains every epoch.
    _, whole = _run(tmp_path / "whole", ToyTask(val_by_epoch=PLATEAU_VALS), epochs=6)
    assert whole.stopped_at is None and whole.global_step == 6 * STEPS


def test_a_resumed_run_stops_where_the_uninterrupted_one_did(tmp_path: Path) -> None:
    whole, _ = _run(
        tmp_path / "whole", ToyTask(val_by_epoch=PLATEAU_VALS), epochs=6, until_plateau=2
    )
    killed = tmp_path / "killed"
    with pytest.raises(Killed):
        _run(killed, ToyTask(kill_at=(3, 3), val_by_epoch=PLATEAU_VALS), epochs=6, until_plateau=2)
    resumed, result = _run(
        killed, ToyTask(val_by_epoch=PLATEAU_VALS), epochs=6, until_plateau=2, resume=True
    )
    assert result.stopped_at == 4 and result.global_step == 4 * STEPS
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    # Resuming a run that stopped trains nothing more and stops at once.
    task = ToyTask(val_by_epoch=PLATEAU_VALS)
    _, again = _run(killed, task, epochs=6, until_plateau=2, resume=True)
    assert task.seen == [] and again.stopped_at == 4


def test_until_plateau_needs_the_figure_it_watches(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="'mean'"):
        _run(tmp_path, ToyTask(), epochs=3, until_plateau=1, plateau_metric="mean")


def test_every_trainer_refuses_until_plateau_without_val() -> None:
    from civt_pipe.pipeline.stages.cakd.config import CakdTrainConfig
    from civt_pipe.pipeline.stages.student.config import StudentTrainConfig
    from civt_pipe.pipeline.stages.teacher.config import TeacherTrainConfig

    makers = [
        lambda **kw: StudentTrainConfig(data="d", store="s.zarr", out="o", **kw),
        lambda **kw: TeacherTrainConfig(arch="cnn-nano", data="d", out="o", **kw),
        lambda **kw: CakdTrainConfig(data="d", teacher="vit=vit-nano:v.pt", out="o", **kw),
    ]
    for make in makers:
        with pytest.raises(UserError, match="--until-plateau needs --val"):
            make(until_plateau=3)
        assert make(val="v", until_plateau=3).until_plateau == 3
