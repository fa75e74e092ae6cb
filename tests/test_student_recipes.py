"""train-student's recipes, per-teacher distillation kinds and alignment roles: resolution,
provenance and the one-line refusals of bad input (no training here; see test_train_student)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from civt_pipe.cli.app import app
from civt_pipe.pipeline.runtime.errors import UserError
from civt_pipe.pipeline.stages.student.config import (
    StudentTrainConfig,
    parse_align,
    parse_distill,
)
from civt_pipe.pipeline.train.recipes import HYPERPARAMETERS, RECIPES, resolve_hyperparameters

NONE_GIVEN = dict.fromkeys(HYPERPARAMETERS)


def _values(recipe: str, batch: int, drop: float | None = 0.1, **given: float) -> dict:
    resolved = resolve_hyperparameters(
        recipe, {**NONE_GIVEN, **given}, global_batch=batch, preset_drop_path=drop
    )
    return {name: r.value for name, r in resolved.items()}


def test_small_recipe_is_the_former_defaults_bit_for_bit() -> None:
    # What train-student computed before recipes existed (the behaviour pins rest on it).
    assert _values("small", 64, drop=0.0) == {
        "lr": 1e-3 * 64 / 512,
        "min_lr": 1e-6,
        "warmup_epochs": 5.0,
        "weight_decay": 0.05,
        "label_smoothing": 0.0,
        "clip_grad": None,
        "drop_path": 0.0,
    }
    # min lr is capped at lr, as before (min(1e-6, lr)).
    capped = resolve_hyperparameters(
        "small", {**NONE_GIVEN, "lr": 1e-7}, global_batch=64, preset_drop_path=None
    )["min_lr"]
    assert capped.value == 1e-7 and capped.source.endswith("capped at lr")


def test_published_recipes_scale_with_the_global_batch() -> None:
    coadvise = _values("coadvise", 1024)
    assert coadvise == {
        "lr": 1e-3,
        "min_lr": 1e-5,
        "warmup_epochs": 20.0,
        "weight_decay": 0.05,
        "label_smoothing": 0.1,
        "clip_grad": 15.0,
        "drop_path": 0.0,
    }
    deit = _values("deit", 1024)
    assert deit["lr"] == 1e-3 and deit["min_lr"] == 1e-5  # DeiT does not scale its min lr
    assert deit["warmup_epochs"] == 5.0 and deit["clip_grad"] is None and deit["drop_path"] == 0.1
    # A preset without stochastic depth (ResNet-10) gets none, whatever the recipe says.
    assert _values("deit", 512, drop=None)["drop_path"] is None


def test_command_line_values_beat_the_recipe_and_say_so() -> None:
    resolved = resolve_hyperparameters(
        "coadvise",
        {**NONE_GIVEN, "lr": 0.01, "clip_grad": 0.0, "drop_path": 0.2},
        global_batch=256,
        preset_drop_path=0.1,
    )
    assert resolved["lr"].value == 0.01 and resolved["lr"].source == "--lr (command line)"
    assert resolved["clip_grad"].value is None and "no clipping" in resolved["clip_grad"].source
    assert resolved["drop_path"].value == 0.2
    assert resolved["min_lr"].value == 5e-6 * 256 / 512
    assert resolved["min_lr"].source.startswith("recipe coadvise: 5e-06 × 256/512")
    assert resolved["warmup_epochs"].to_dict() == {
        "value": 20.0,
        "from": "recipe coadvise (OliverRensu/co-advise config.py + main.py)",
    }


def test_help_lists_every_recipes_defaults() -> None:
    result = CliRunner().invoke(app, ["train-student", "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for recipe in RECIPES:
        assert recipe in text
    assert "coadvise 5e-06 × global batch / 512" in text and "coadvise 15" in text
    for flag in ("--recipe", "--clip-grad", "--drop-path", "--min-lr", "--distill", "--align"):
        assert flag in text


def test_distill_and_align_parse_per_teacher() -> None:
    assert parse_distill(["hard"]) == ("hard", {})
    assert parse_distill(["cnn=hard", "inn=soft"]) == ("soft", {"cnn": "hard", "inn": "soft"})
    assert parse_align(["a=conv", "b=inv"]) == {"a": "conv", "b": "inv"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--distill", "cnn=medium"], "--distill 'cnn=medium' must be soft, hard"),
        (["--distill", "=hard"], "empty teacher name"),
        (["--token-mode", "aligned", "--align", "x=foo"], "the role must be conv or inv"),
        (["--token-mode", "aligned", "--align", "cnn"], "must be NAME=conv or NAME=inv"),
        (["--align", "cnn=conv"], "--align only applies to --token-mode aligned"),
        (["--recipe", "fast"], "--recipe must be one of small, coadvise, deit"),
        (["--distill-smoothing", "1"], "--distill-smoothing must be in [0, 1)"),
    ],
)
def test_bad_options_are_one_line_errors(args: list[str], message: str) -> None:
    base = ["train-student", "--data", "d", "--store", "s", "--out", "o"]
    result = CliRunner().invoke(app, [*base, *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("civt-pipe: error: "), result.output
    assert message in lines[0]


def test_config_checks_kinds_and_roles_given_from_python() -> None:
    with pytest.raises(UserError, match="--distill cnn=medium must be soft or hard"):
        StudentTrainConfig(data="d", out="o", distills={"cnn": "medium"})  # type: ignore[dict-item]
    with pytest.raises(UserError, match="--align a=foo: the role must be conv or inv"):
        StudentTrainConfig(data="d", out="o", token_mode="aligned", align={"a": "foo"})
