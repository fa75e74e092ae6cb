"""Warm-up + cosine learning rate as a pure function of the step, and optimizer construction."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from civt_pipe.pipeline.train.schedule import (
    OptimizerConfig,
    ScheduleConfig,
    build_optimizer,
    lr_at,
    set_lr,
)


def test_warmup_rises_linearly_to_the_peak() -> None:
    cfg = ScheduleConfig(base_lr=1.0, total_steps=100, warmup_steps=4)
    assert [lr_at(s, cfg) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]


def test_cosine_starts_at_peak_and_ends_at_min() -> None:
    cfg = ScheduleConfig(base_lr=0.4, total_steps=110, warmup_steps=10, min_lr=0.01)
    assert lr_at(10, cfg) == pytest.approx(0.4)
    assert lr_at(60, cfg) == pytest.approx(0.01 + 0.39 * 0.5)  # halfway: the cosine's midpoint
    assert lr_at(110, cfg) == pytest.approx(0.01)
    assert lr_at(500, cfg) == pytest.approx(0.01)  # past the end it stays at the floor


def test_cosine_is_exact_at_every_step_and_monotone() -> None:
    cfg = ScheduleConfig(base_lr=2.0, total_steps=20, warmup_steps=0, min_lr=0.0)
    values = [lr_at(s, cfg) for s in range(21)]
    for s, value in enumerate(values):
        assert value == pytest.approx(1.0 + math.cos(math.pi * s / 20))
    assert all(a > b for a, b in itertools.pairwise(values))


def test_warmup_over_the_whole_run_stays_linear() -> None:
    cfg = ScheduleConfig(base_lr=1.0, total_steps=5, warmup_steps=5)
    assert [lr_at(s, cfg) for s in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base_lr": 0.0, "total_steps": 10}, "positive"),
        ({"base_lr": 0.1, "total_steps": 0}, "at least one step"),
        ({"base_lr": 0.1, "total_steps": 10, "warmup_steps": 11}, "warm-up"),
        ({"base_lr": 0.1, "total_steps": 10, "min_lr": 0.2}, "minimum"),
    ],
)
def test_schedule_config_rejects_nonsense(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScheduleConfig(**kwargs)  # type: ignore[arg-type]


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


def test_sgd_is_nesterov_and_decays_only_weights() -> None:
    opt = build_optimizer(_model(), OptimizerConfig(name="sgd", lr=0.1, weight_decay=1e-4))
    assert isinstance(opt, torch.optim.SGD)
    decayed, undecayed = opt.param_groups
    assert decayed["nesterov"] and decayed["momentum"] == 0.9
    assert decayed["weight_decay"] == 1e-4 and undecayed["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"])
    assert all(p.ndim == 1 for p in undecayed["params"])
    assert len(decayed["params"]) == 2 and len(undecayed["params"]) == 4


def test_adamw_and_set_lr() -> None:
    opt = build_optimizer(_model(), OptimizerConfig(name="adamw", lr=1e-3, weight_decay=0.05))
    assert isinstance(opt, torch.optim.AdamW)
    set_lr(opt, 0.5)
    assert all(group["lr"] == 0.5 for group in opt.param_groups)


def test_optimizer_config_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'"):
        OptimizerConfig(name="lamb")  # type: ignore[arg-type]
