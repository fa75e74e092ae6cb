"""The checkpointer: atomic round trip with RNG, and the one resume rule (field metadata)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from civt_pipe.pipeline.runtime.errors import UserError
from civt_pipe.pipeline.runtime.options import option
from civt_pipe.pipeline.train.checkpointer import Checkpointer
from civt_pipe.pipeline.train.state import TrainState


@dataclass(kw_only=True)
class ToyConfig:
    lr: float = option(0.1, help="Changes the weights.")
    workers: int = option(0, help="Does not.", resume="may-change")
    epochs: int = 2
    """A plain field: must match, like every field nobody marked."""


def _checkpointer(path: Path, config: ToyConfig, **kw: Any) -> Checkpointer:
    def make(net: nn.Module, state: dict[str, Any] | None, metrics: Mapping[str, Any]) -> dict:
        ckpt = {
            "format": "civt-pipe",
            "version": 1,
            "kind": "teacher",
            "arch": "toy",
            "model_args": {},
            "state_dict": net.state_dict(),
            "metrics": dict(metrics),
            "config": asdict(config),
        }
        if state is not None:
            ckpt["train_state"] = state
        return ckpt

    settings: dict[str, Any] = dict(
        path=path,
        make=make,
        kind="teacher",
        command="toy-train",
        identity={"world_size": 1, "fingerprint": "abc"},
        schedule={"base_lr": 0.1, "total_steps": 10},
    )
    settings.update(kw)
    return Checkpointer(**settings)


def _trained() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    return model, optimizer


def _saved(tmp_path: Path, config: ToyConfig) -> Checkpointer:
    model, optimizer = _trained()
    ckpt = _checkpointer(tmp_path / "run.pt", config)
    ckpt.save(model, optimizer, epoch=1, step_in_epoch=2, global_step=7, metrics={"a": 1})
    return ckpt


def test_round_trip_restores_weights_optimizer_position_and_rng(tmp_path: Path) -> None:
    model, optimizer = _trained()
    ckpt = _checkpointer(tmp_path / "run.pt", ToyConfig())
    ckpt.save(model, optimizer, epoch=1, step_in_epoch=2, global_step=7, metrics={})
    expected_draw = torch.rand(5)  # what the RNG gives right after the save
    assert not (tmp_path / "run.pt.partial").exists()

    torch.manual_seed(123)
    fresh = nn.Linear(3, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    point = ckpt.load()
    state = ckpt.restore(point, fresh, fresh_opt)
    assert (state.epoch, state.step_in_epoch, state.global_step) == (1, 2, 7)
    assert torch.equal(torch.rand(5), expected_draw)
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)
    exp_avg = optimizer.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], exp_avg)
    assert state.identity == {"world_size": 1, "fingerprint": "abc"}


def test_same_config_resumes(tmp_path: Path) -> None:
    ckpt = _saved(tmp_path, ToyConfig())
    ckpt.check(ckpt.load(), ToyConfig, asdict(ToyConfig()))


def test_a_may_change_field_may_change(tmp_path: Path) -> None:
    ckpt = _saved(tmp_path, ToyConfig())
    ckpt.check(ckpt.load(), ToyConfig, asdict(ToyConfig(workers=4)))


@pytest.mark.parametrize(
    ("changed", "message"),
    [
        (ToyConfig(lr=0.2), "it was trained with lr=0.1, this run has 0.2"),
        (ToyConfig(epochs=3), "it was trained with epochs=2, this run has 3"),
    ],
)
def test_a_must_match_field_that_changed_is_refused_by_name(
    tmp_path: Path, changed: ToyConfig, message: str
) -> None:
    ckpt = _saved(tmp_path, ToyConfig())
    with pytest.raises(UserError, match=f"cannot resume .*run.pt: {message}"):
        ckpt.check(ckpt.load(), ToyConfig, asdict(changed))


def test_derived_facts_and_the_schedule_must_match(tmp_path: Path) -> None:
    _saved(tmp_path, ToyConfig())
    other_world = _checkpointer(
        tmp_path / "run.pt", ToyConfig(), identity={"world_size": 2, "fingerprint": "abc"}
    )
    with pytest.raises(UserError, match="trained with world_size=1, this run has 2"):
        other_world.check(other_world.load(), ToyConfig, asdict(ToyConfig()))
    other_schedule = _checkpointer(
        tmp_path / "run.pt", ToyConfig(), schedule={"base_lr": 0.1, "total_steps": 20}
    )
    with pytest.raises(UserError, match="trained with schedule="):
        other_schedule.check(other_schedule.load(), ToyConfig, asdict(ToyConfig()))


def test_only_a_resumable_checkpoint_of_the_right_kind_loads(tmp_path: Path) -> None:
    model, _ = _trained()
    ckpt = _checkpointer(tmp_path / "final.pt", ToyConfig())
    ckpt.save_final(model, tmp_path / "final.pt", {})
    with pytest.raises(UserError, match="is not a resumable toy-train checkpoint"):
        ckpt.load()
    student = _checkpointer(tmp_path / "run.pt", ToyConfig(), kind="student")
    _saved(tmp_path, ToyConfig())
    with pytest.raises(UserError, match="is not a resumable toy-train checkpoint"):
        student.load()


def test_states_of_older_versions_still_read() -> None:
    teacher = TrainState.from_dict({"epoch": 3, "step": 60, "optimizer": {}, "rng": {}})
    assert (teacher.epoch, teacher.step_in_epoch, teacher.global_step) == (3, 0, 60)
    assert teacher.schedule is None and teacher.identity == {}
    student_v1 = {
        "version": 1,
        "epoch": 1,
        "step_in_epoch": 4,
        "global_step": 13,
        "optimizer": {},
        "schedule": {"base_lr": 0.1},
        "rng": {},
        "identity": {"world_size": 1},
    }
    state = TrainState.from_dict(student_v1)
    # A state of before the fp16 loss scale was kept (issue 22) reads with no scaler state.
    assert state.to_dict() == {**student_v1, "version": 2, "scaler": None}
