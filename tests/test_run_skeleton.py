"""The one training skeleton: the options every trainer shares, the run directory policy, the
rules for batch, learning rate and warm-up, and the validation class check."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest

from civt_pipe.pipeline.runtime.errors import UserError
from civt_pipe.pipeline.runtime.options import option_info
from civt_pipe.pipeline.stages.cakd.config import CakdTrainConfig
from civt_pipe.pipeline.stages.student.config import StudentTrainConfig
from civt_pipe.pipeline.stages.teacher.config import TeacherTrainConfig
from civt_pipe.pipeline.train.recipes import (
    CAKD_RECIPES,
    RECIPE_TABLES,
    STUDENT_RECIPES,
    TEACHER_RECIPES,
    Recipe,
    recipes_markdown,
    resolve_hyperparameters,
)
from civt_pipe.pipeline.train.run_options import (
    RunOptions,
    scaled_lr,
    shared_options_markdown,
    warmup_steps_for,
)
from civt_pipe.pipeline.train.schedule import MultiStepSchedule, ScheduleConfig
from civt_pipe.pipeline.train.skeleton import (
    Optimization,
    build_schedule,
    check_run_dir,
    check_same_classes,
    clear_run_dir,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "commands.md"
TRAINERS = (TeacherTrainConfig, StudentTrainConfig, CakdTrainConfig)


def test_commands_md_shows_the_generated_shared_options() -> None:
    text = DOCS.read_text(encoding="utf-8")
    begin = text.index("<!-- shared-options:begin")
    body = text[text.index("\n", begin) + 1 : text.index("<!-- shared-options:end -->")]
    assert body == shared_options_markdown()


def test_commands_md_shows_every_recipe_in_the_one_table_format() -> None:
    text = DOCS.read_text(encoding="utf-8")
    begin = text.index("<!-- recipes:begin")
    body = text[text.index("\n", begin) + 1 : text.index("<!-- recipes:end -->")]
    assert body == recipes_markdown()
    # One type for every trainer's table, and each trainer reads its own table.
    for table in RECIPE_TABLES.values():
        assert table and all(type(recipe) is Recipe for recipe in table.values())
    assert "| `paper-cifar` | sgd | 0.8 × global batch / 512 |" in body
    assert "| `resnet` | sgd | 0.2 × global batch / 512 | 0.0001 | 100 | 256 | 5 | yes |" in body


def test_each_trainer_resolves_its_recipe_from_the_shared_table() -> None:
    """The values a run resolves come from the one table (a copy elsewhere would drift)."""
    from civt_pipe.pipeline.stages.cakd.config import resolve_optimization

    cakd = CakdTrainConfig(teacher="vit=vit-nano:t.pt", data="d", out="o", recipe="paper-cifar")
    opt = resolve_optimization(cakd, world_size=2)
    recipe = CAKD_RECIPES["paper-cifar"]
    assert opt.lr == scaled_lr(recipe.lr, 64 * 2) and opt.milestones == recipe.milestones
    assert opt.nesterov is recipe.nesterov is False and opt.epochs == recipe.epochs
    hyper = resolve_hyperparameters("deit", {}, global_batch=256, preset_drop_path=0.0)
    assert hyper["lr"].value == STUDENT_RECIPES["deit"].lr * 256 / 512
    assert hyper["min_lr"].value == STUDENT_RECIPES["deit"].min_lr  # not scaled in DeiT
    assert TEACHER_RECIPES["resnet"].nesterov and not CAKD_RECIPES["paper-imagenet"].nesterov


@pytest.mark.parametrize("config", TRAINERS)
def test_every_trainer_declares_the_shared_options_once(config: type) -> None:
    assert issubclass(config, RunOptions)
    shared = {f.name: f for f in dataclasses.fields(RunOptions)}
    for f in dataclasses.fields(config):
        if f.name in shared:  # inherited, never redeclared with another meaning
            assert option_info(f) == option_info(shared[f.name]), f.name
    batch = next(f for f in dataclasses.fields(config) if f.name == "batch_size")
    info = option_info(batch)
    assert info is not None and "per step and rank" in info.help


def test_learning_rate_scales_with_the_global_batch_and_warmup_has_one_rule() -> None:
    assert scaled_lr(5e-4, 512) == 5e-4
    assert scaled_lr(3.2e-2, 64) == 4e-3  # the nano teachers' and train-cakd small's rate
    assert warmup_steps_for(5, 300, 10) == 50
    assert warmup_steps_for(5, 10, 10) == 20  # clamped to a fifth of the run
    cosine = build_schedule(
        Optimization(epochs=10, lr=0.1, weight_decay=0, warmup_epochs=5), steps_per_epoch=10
    )
    assert type(cosine) is ScheduleConfig and cosine.warmup_steps == 20
    steps = build_schedule(
        Optimization(epochs=10, lr=0.1, weight_decay=0, warmup_epochs=1, milestones=(5, 8)), 10
    )
    assert isinstance(steps, MultiStepSchedule) and steps.milestones == (50, 80)


def test_run_directory_policy(tmp_path: Path) -> None:
    def opts(**kw: object) -> RunOptions:
        return RunOptions(data="d", out=str(tmp_path / "run"), **kw)  # type: ignore[arg-type]

    assert check_run_dir(opts()) == tmp_path / "run"  # a fresh directory
    with pytest.raises(UserError, match=r"last\.pt does not exist; start without --resume"):
        check_run_dir(opts(resume=True))
    run = tmp_path / "run"
    run.mkdir()
    for name in ("last.pt", "final.pt", "metrics.jsonl", "notes.txt"):
        (run / name).write_text("x")
    with pytest.raises(UserError, match="already holds a run; pass --resume"):
        check_run_dir(opts())
    assert check_run_dir(opts(resume=True)) == run
    assert check_run_dir(opts(overwrite=True)) == run
    assert (run / "last.pt").exists()  # the check removes nothing
    clear_run_dir(run)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]  # only the run's own files
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError):
        check_run_dir(RunOptions(data="d", out=str(tmp_path / "file")))


def test_validation_shards_must_have_the_training_classes() -> None:
    train = SimpleNamespace(num_classes=3, class_names=("a", "b", "c"))
    check_same_classes(SimpleNamespace(num_classes=3, class_names=("a", "b", "c")), train)
    with pytest.raises(UserError, match="validation shards have 2 classes, training shards 3"):
        check_same_classes(SimpleNamespace(num_classes=2, class_names=("a", "b")), train)
    with pytest.raises(UserError, match="validation shards name class 1 'c', training shards 'b'"):
        check_same_classes(SimpleNamespace(num_classes=3, class_names=("a", "c", "b")), train)
