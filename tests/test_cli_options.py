"""The command line is built from the stage configs: every option is declared once.

For every command: each config field with a flag shows in ``--help``, and a value given on the
command line reaches the config the stage receives unchanged (the stage is replaced by a function
that records its config). Bad numbers and choices are one ``civt-pipe: error:`` line, exit 2.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from civt_pipe.cli.app import app
from civt_pipe.cli.options import cli_fields, flag_of
from civt_pipe.pipeline.data import make_shards
from civt_pipe.pipeline.data.make_shards import MakeShardsConfig
from civt_pipe.pipeline.models.teachers import TeacherSpec
from civt_pipe.pipeline.runtime.options import option_info
from civt_pipe.pipeline.stages import plot as plot_stage
from civt_pipe.pipeline.stages.cakd import run as cakd_run
from civt_pipe.pipeline.stages.cakd.config import CakdTrainConfig
from civt_pipe.pipeline.stages.dump import run as dump_run
from civt_pipe.pipeline.stages.dump.config import DumpConfig
from civt_pipe.pipeline.stages.evaluate import run as evaluate_run
from civt_pipe.pipeline.stages.evaluate.run import EvaluateConfig
from civt_pipe.pipeline.stages.export import run as export_run
from civt_pipe.pipeline.stages.export.config import ExportConfig
from civt_pipe.pipeline.stages.plot import PlotConfig
from civt_pipe.pipeline.stages.student import run as student
from civt_pipe.pipeline.stages.student.config import StudentTrainConfig
from civt_pipe.pipeline.stages.teacher import run as teacher
from civt_pipe.pipeline.stages.teacher.config import ResolvedTeacherConfig, TeacherTrainConfig
from civt_pipe.pipeline.train.run_options import RunOptions
from civt_pipe.pipeline.workflows import quickstart
from civt_pipe.pipeline.workflows.quickstart import QuickstartConfig

# command, config, (module, stage function name), the arguments every run needs
COMMANDS: list[tuple[str, type, Any, str, list[str]]] = [
    ("make-shards", MakeShardsConfig, make_shards, "make_shards", ["digits", "out"]),
    ("train-teacher", TeacherTrainConfig, teacher, "train_teacher", []),
    ("dump-logits", DumpConfig, dump_run, "run_dump", []),
    ("train-student", StudentTrainConfig, student, "train_student", []),
    ("evaluate", EvaluateConfig, evaluate_run, "evaluate", []),
    ("quickstart", QuickstartConfig, quickstart, "run_quickstart", []),
    ("train-cakd", CakdTrainConfig, cakd_run, "train_cakd", []),
    ("export", ExportConfig, export_run, "export", ["ckpt.pt", "out.safetensors"]),
    ("plot", PlotConfig, plot_stage, "plot_runs", ["run-a", "run-b"]),
]
IDS = [c[0] for c in COMMANDS]
POSITIONAL = {
    "make-shards": ("source", "out_dir"),
    "export": ("checkpoint", "out"),
    "plot": ("run_dirs",),
}
"""The fields each command takes as positional arguments (shown by name in --help)."""

# A value unlike the default for each kind of field, as (command-line text, expected value).
SPECIAL: dict[str, tuple[list[str], Any]] = {
    "teachers": (["a=cnn-nano:a.pt", "b=inn-nano:b.pt"], None),  # per config, below
    "split": (["test"], "test"),
    "format": (["jpg"], "jpg"),
    "optimizer": (["sgd"], "sgd"),
    "token_mode": (["shared"], "shared"),
    "recipe": (["deit"], "deit"),
    "verify_replay": (["all"], "all"),
    "on_error": (["skip"], "skip"),
    "aug": (["crop-flip"], "crop-flip"),
    "device": (["cpu"], "cpu"),
    "store_views": (["2"], 2),
    "store_teachers": (["a", "b"], ("a", "b")),
    "min_scale": (["0.5"], 0.5),
    "hflip": (["0.25"], 0.25),
    "label_smoothing": (["0.2"], 0.2),
    "topk": (["3"], 3),
    "precision": (["bf16"], "bf16"),
    "decoder": (["pil"], "pil"),
    "projectors": (["gl"], "gl"),
    "disc_widths": (["32", "16"], (32, 16)),
    "render_device": (["cpu"], "cpu"),
}

# Fields whose values differ by command (their choices are the command's own).
PER_COMMAND: dict[type, dict[str, tuple[list[str], Any]]] = {
    CakdTrainConfig: {
        "teacher": (["vit=vit-nano:t.pt"], "vit=vit-nano:t.pt"),
        "method": (["logit"], "logit"),
        "recipe": (["paper-cifar"], "paper-cifar"),
        "milestones": (["3", "5"], (3, 5)),
        "feature_norm": (["--no-feature-norm"], False),
        "multi_view": (["--no-multi-view"], False),
    },
    ExportConfig: {"format": (["timm"], "timm"), "head": (["cls"], "cls")},
    EvaluateConfig: {"preprocess": (["zoo"], "zoo")},
}


class Recorded(Exception):
    """Raised by the fake stage to stop the command once the config is captured."""


def _capture(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[Any]:
    seen: list[Any] = []

    def fake(cfg: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(cfg)
        raise Recorded

    monkeypatch.setattr(module, name, fake)
    return seen


def _value_for(config: type, field: dataclasses.Field[Any]) -> tuple[list[str], Any]:
    """Command-line text for a field and the value the config must then hold."""
    if field.name == "teachers":
        texts = SPECIAL["teachers"][0]
        if config is DumpConfig:
            return texts, tuple(TeacherSpec.parse(t) for t in texts)
        return texts, tuple(texts)
    if config in PER_COMMAND and field.name in PER_COMMAND[config]:
        return PER_COMMAND[config][field.name]
    if field.name in SPECIAL:
        return SPECIAL[field.name]
    hints = {f.name: f.type for f in dataclasses.fields(config)}
    kind = str(hints[field.name])
    if "bool" in kind:
        return [], True
    if "Path" in kind:
        return ["some/where"], Path("some/where")
    if "int" in kind:
        return ["7"], 7
    if "float" in kind:
        return ["0.125"], 0.125
    return ["text-value"], "text-value"


def _everything(command: str, config: type, positional: list[str]) -> tuple[list[str], dict]:
    """One command line that sets every CLI field of ``config``, and the expected values."""
    args = [command, *positional]
    expected: dict[str, Any] = {}
    for field, info in cli_fields(config):
        texts, value = _value_for(config, field)
        if command == "make-shards" and field.name in ("source", "out_dir"):
            expected[field.name] = "digits" if field.name == "source" else Path("out")
            continue
        if field.name in ("checkpoint", "out") and command == "export":
            expected[field.name] = Path(positional[0 if field.name == "checkpoint" else 1])
            continue
        if field.name == "run_dirs" and command == "plot":
            expected[field.name] = tuple(Path(p) for p in positional)
            continue
        if texts and texts[0].startswith("--no-"):
            args.append(texts[0])  # a flag that is on by default, switched off
            expected[field.name] = value
            continue
        flag = flag_of(field, info)
        if not texts:
            args.append(flag)
        for text in texts:
            args += [flag, text]
        expected[field.name] = value
    if command == "train-student":
        # --store and --teacher exclude each other: the store mode here, --teacher below.
        idx = args.index("--teacher")
        del args[idx : idx + 4]
        expected["teachers"] = ()
        # --resume and --overwrite exclude each other.
        args.remove("--overwrite")
        expected["overwrite"] = False
    if command in ("train-teacher", "train-cakd"):
        args.remove("--overwrite")
        expected["overwrite"] = False
    return args, expected


@pytest.mark.parametrize(("command", "config", "module", "stage", "positional"), COMMANDS, ids=IDS)
def test_help_shows_every_config_option(
    command: str, config: type, module: Any, stage: str, positional: list[str]
) -> None:
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    fields = cli_fields(config)
    assert fields, "a command without config options"
    for field, info in fields:
        if field.name in POSITIONAL.get(command, ()):
            assert field.name.upper() in result.output
            continue
        assert flag_of(field, info) in result.output, field.name
        assert info.help.split()[0] in result.output, field.name


@pytest.mark.parametrize(("command", "config", "module", "stage", "positional"), COMMANDS, ids=IDS)
def test_every_option_reaches_the_config_unchanged(
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    config: type,
    module: Any,
    stage: str,
    positional: list[str],
) -> None:
    seen = _capture(monkeypatch, module, stage)
    args, expected = _everything(command, config, positional)
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, Recorded), result.output
    (cfg,) = seen
    assert isinstance(cfg, config)
    for name, value in expected.items():
        assert getattr(cfg, name) == value, name


def test_defaults_of_the_command_line_are_the_configs(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _capture(monkeypatch, student, "train_student")
    CliRunner().invoke(app, ["train-student", "--data", "d", "--out", "o", "--store", "s"])
    (cfg,) = seen
    # Besides the values, the command line records where each came from (sources).
    assert dataclasses.replace(cfg, sources={}) == StudentTrainConfig(data="d", out="o", store="s")
    assert cfg.sources["data"] == "command-line" and cfg.sources["epochs"] == "default"


def test_tau_and_lambda_split_into_default_and_per_teacher(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = _capture(monkeypatch, student, "train_student")
    args = ["train-student", "--data", "d", "--out", "o", "--store", "s"]
    args += ["--tau", "2", "--tau", "cnn=4", "--lambda", "inn=0.5"]
    CliRunner().invoke(app, args)
    (cfg,) = seen
    assert (cfg.tau, cfg.taus, cfg.lambda_kd, cfg.lambdas) == (2.0, {"cnn": 4.0}, 1.0, {"inn": 0.5})


def test_online_teachers_reach_the_student_config(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _capture(monkeypatch, student, "train_student")
    args = ["train-student", "--data", "d", "--out", "o"]
    CliRunner().invoke(app, [*args, "--teacher", "a=cnn-nano:a.pt", "--teacher", "b=x:b.pt"])
    assert seen[0].teachers == ("a=cnn-nano:a.pt", "b=x:b.pt")


DUMP = ["dump-logits", "--data", "d", "--teacher", "a=b:c", "--out", "o"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train-student", "--data", "d", "--out", "o", "--lr", "nan"], "--lr must be a finite"),
        (["train-student", "--data", "d", "--out", "o", "--epochs", "0"], "--epochs must be at"),
        (["train-student", "--data", "d", "--out", "o", "--token-mode", "x"], "--token-mode must"),
        (["train-teacher", "--arch", "a", "--data", "d", "--out", "o", "--lr", "inf"], "--lr must"),
        (["train-teacher", "--arch", "a", "--data", "d", "--out", "o", "--hflip", "2"], "--hflip"),
        ([*DUMP, "--topk", "0"], "--topk must be at least 1"),
        ([*DUMP, "--aug", "x"], "--aug must be one of auto"),
        (["evaluate", "--checkpoint", "c", "--data", "d", "--batch-size", "0"], "--batch-size"),
        (["make-shards", "digits", "o", "--shard-size", "-1"], "--shard-size must be at least 1"),
        (["make-shards", "digits", "o", "--split", "val"], "--split must be one of train, test"),
        (["quickstart", "--topk", "11"], "--topk must be at most 10"),
    ],
)
def test_bad_numbers_and_choices_are_one_line(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("civt-pipe: error: "), result.output
    assert message in lines[0]


def test_resume_flags_mark_only_what_cannot_change_the_weights() -> None:
    def free(config: type) -> set[str]:
        return {
            f.name
            for f in dataclasses.fields(config)
            if (info := option_info(f)) is not None and info.resume == "may-change"
        }

    assert free(StudentTrainConfig) == {
        "data", "out", "store", "teachers", "val", "resume", "overwrite", "save_every",
        "verify_replay", "workers", "threads", "device", "log_every", "progress",
        "tensorboard", "sources",
        # The spelling of --precision may change: the resolved precision is in the identity.
        "precision", "compile",
    }  # fmt: skip
    assert free(ResolvedTeacherConfig) == {
        "data", "val", "out", "init", "sources", "compile", "save_every",
    }  # fmt: skip
    # The options every trainer shares (train/run_options.py) have one resume rule everywhere:
    # all may change except --until-plateau, which decides where the run ends and so its weights.
    shared = {f.name for f in dataclasses.fields(RunOptions)}
    assert shared - free(RunOptions) == {"until_plateau"}
    for config in (TeacherTrainConfig, StudentTrainConfig, CakdTrainConfig):
        assert shared & free(config) == free(RunOptions), config.__name__
