"""``--config FILE.toml``: options from a file, the command line on top, the sources recorded.

The stage functions are replaced by a recorder for the parsing tests (no training); one tiny
real run shows a config-file run and the same run spelled on the command line give the same
weights. Every example in ``configs/`` is parsed against its command, so none can rot.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest
from toy_shards import dump_toy_store, make_toy_shards, make_toy_teacher
from typer.testing import CliRunner

from civt_pipe.cli.app import app
from civt_pipe.pipeline.models.teacher_spec import TeacherSpec
from civt_pipe.pipeline.runtime.config_file import FileOption, file_values, read_config_file
from civt_pipe.pipeline.runtime.errors import UserError
from civt_pipe.pipeline.stages.dump import run as dump_run
from civt_pipe.pipeline.stages.student import run as student_run
from civt_pipe.pipeline.stages.teacher import run as teacher_run

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

STAGES: dict[str, tuple[Any, str]] = {
    "train-student": (student_run, "train_student"),
    "train-teacher": (teacher_run, "train_teacher"),
    "dump-logits": (dump_run, "run_dump"),
}


class Recorded(Exception):
    """Raised by the fake stage once it has the config."""


def _capture(monkeypatch: pytest.MonkeyPatch, command: str) -> list[Any]:
    seen: list[Any] = []

    def fake(cfg: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(cfg)
        raise Recorded

    module, name = STAGES[command]
    monkeypatch.setattr(module, name, fake)
    return seen


def _parse(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> Any:
    """The config ``civt-pipe ARGS`` hands its stage."""
    seen = _capture(monkeypatch, args[0])
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, Recorded), result.output
    return seen[0]


def _error(args: list[str]) -> str:
    """The one error line of a refused command line (exit 2)."""
    result = CliRunner().invoke(app, args)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("civt-pipe: error: ") and "Traceback" not in result.output
    return lines[0]


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- the examples


def _usage(path: Path) -> list[str]:
    """The example's first line, ``# civt-pipe COMMAND --config configs/NAME.toml ...``."""
    first = path.read_text(encoding="utf-8").splitlines()[0]
    words = shlex.split(first.removeprefix("#"))
    assert words[:1] == ["civt-pipe"] and "--config" in words, first
    return [str(CONFIGS / Path(w).name) if w.endswith(".toml") else w for w in words[1:]]


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_every_example_config_builds_its_command(
    monkeypatch: pytest.MonkeyPatch, path: Path
) -> None:
    args = _usage(path)
    cfg = _parse(monkeypatch, args)
    flat, section = read_config_file(path, args[0], STAGES)
    raw = {**flat, **section}
    assert raw, f"{path.name} sets nothing"
    if hasattr(cfg, "sources"):  # every key of the file reached the config as its own option
        assert list(cfg.sources.values()).count("config-file") == len(raw)
    for key, value in raw.items():  # and plain values arrive unchanged
        name = key.replace("-", "_")
        if hasattr(cfg, name) and isinstance(value, int | float | str):
            assert getattr(cfg, name) in (value, Path(str(value))), key


def test_the_examples_cover_every_recipe_a_teacher_and_a_dump() -> None:
    commands = {p.name: _usage(p)[0] for p in CONFIGS.glob("*.toml")}
    for recipe in ("small", "coadvise", "deit"):
        assert commands.get(f"{recipe}.toml") == "train-student"
        text = (CONFIGS / f"{recipe}.toml").read_text(encoding="utf-8")
        assert f'recipe = "{recipe}"' in text
    assert "train-teacher" in commands.values() and "dump-logits" in commands.values()


# ------------------------------------------------------------------------ keys and values


def test_file_fills_what_the_command_line_leaves_and_sources_say_where(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = _write(
        tmp_path / "run.toml",
        'data = "d"\nout = "o"\nstore = "s"\nepochs = 3\nbatch-size = 8\nlr = 0.002\n'
        'tau = {cnn = 2.0, inn = 4}\nlambda = 0.5\ndistill = "hard"\n',
    )
    cfg = _parse(
        monkeypatch, ["train-student", "--config", str(config), "--epochs", "5", "--out", "x"]
    )
    assert (cfg.data, cfg.store, cfg.out, cfg.epochs, cfg.batch_size, cfg.lr) == (
        "d", "s", "x", 5, 8, 0.002,
    )  # fmt: skip
    assert (cfg.tau, cfg.taus, cfg.lambda_kd, cfg.distill) == (
        1.0,
        {"cnn": 2.0, "inn": 4.0},
        0.5,
        "hard",
    )
    assert cfg.sources["epochs"] == "command-line" and cfg.sources["out"] == "command-line"
    assert cfg.sources["batch_size"] == "config-file" and cfg.sources["tau"] == "config-file"
    assert cfg.sources["model"] == "default" and cfg.sources["align"] == "default"


def test_a_flag_given_with_its_default_value_still_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = _write(tmp_path / "run.toml", 'data = "d"\nout = "o"\nepochs = 3\n')
    cfg = _parse(monkeypatch, ["train-teacher", "--config", str(config), "--arch", "cnn-nano"])
    assert cfg.epochs == 3 and cfg.sources["arch"] == "command-line"
    # --epochs 10 equals nothing's default here, yet it was typed: the command line wins.
    cfg = _parse(
        monkeypatch, ["train-student", "--config", str(config), "--epochs", "10", "--store", "s"]
    )
    assert cfg.epochs == 10 and cfg.sources["epochs"] == "command-line"


def test_one_file_drives_several_commands_through_sections(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = _write(
        tmp_path / "all.toml",
        'data = "shards"\nseed = 3\n'
        '[train-teacher]\narch = "cnn-nano"\nout = "cnn"\n'
        '[dump-logits]\nout = "store.zarr"\nteacher = {cnn = "cnn-nano:cnn"}\nseed = 4\n'
        '[train-student]\nstore = "store.zarr"\nout = "run"\n',
    )
    teacher = _parse(monkeypatch, ["train-teacher", "--config", str(config)])
    assert (teacher.arch, teacher.out, teacher.seed) == ("cnn-nano", "cnn", 3)
    dump = _parse(monkeypatch, ["dump-logits", "--config", str(config)])
    assert dump.teachers == (TeacherSpec.parse("cnn=cnn-nano:cnn"),) and dump.seed == 4
    student = _parse(monkeypatch, ["train-student", "--config", str(config)])
    assert (student.store, student.out, student.seed) == ("store.zarr", "run", 3)


def test_an_unknown_key_names_the_key_the_command_and_a_close_match(tmp_path: Path) -> None:
    config = _write(tmp_path / "run.toml", 'data = "d"\nout = "o"\nbatch_sise = 8\n')
    line = _error(["train-student", "--config", str(config)])
    assert "train-student has no option 'batch_sise'" in line
    assert "did you mean 'batch_size'?" in line and str(config) in line
    # A key of another command is unknown here too (it belongs in that command's table).
    _write(config, 'data = "d"\nout = "o"\narch = "cnn-nano"\n')
    assert "train-student has no option 'arch'" in _error(
        ["train-student", "--config", str(config)]
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('epochs = "ten"', "'epochs' must be an integer, got string 'ten'"),
        ("epochs = 2.5", "'epochs' must be an integer, got number 2.5"),
        ("lr = true", "'lr' must be a number, got boolean True"),
        ("resume = 1", "'resume' must be true or false, got integer 1"),
        ("model = 3", "'model' must be a string, got integer 3"),
        ("tau = [true]", "'tau' must be a string, a list of them or a table"),
        ("tau = {cnn = [1]}", "'tau': 'cnn' must be a string or a number"),
        ("epochs = 3\nepochs-x = 1", "has no option 'epochs-x'"),
        ("epochs = 3\n[train-student]\nepochs = 4\nepochs", "is not valid TOML"),
        ("batch_size = 8\nbatch-size = 9", "--batch-size is given twice"),
        ("tau = 0", "--tau must be positive, got 0.0"),  # the config's own checks still apply
    ],
)
def test_a_wrong_value_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    config = _write(tmp_path / "run.toml", f'data = "d"\nout = "o"\nstore = "s"\n{text}\n')
    assert message in _error(["train-student", "--config", str(config)])


def test_a_missing_or_unreadable_file_and_a_missing_option_are_one_line(tmp_path: Path) -> None:
    assert "does not exist" in _error(["train-student", "--config", str(tmp_path / "no.toml")])
    assert "is a directory" in _error(["train-student", "--config", str(tmp_path)])
    config = _write(tmp_path / "run.toml", 'data = "d"\n')
    line = _error(["train-student", "--config", str(config)])
    assert "missing option '--out'" in line
    assert "missing option '--data'" in _error(["train-student", "--out", "o"])


def test_positional_arguments_stay_on_the_command_line(tmp_path: Path) -> None:
    config = _write(tmp_path / "shards.toml", 'source = "digits"\nshard_size = 10\n')
    line = _error(["make-shards", "digits", "out", "--config", str(config)])
    assert "SOURCE is an argument" in line


def test_file_values_alone_spell_flags_and_tables() -> None:
    options = [
        FileOption(name="batch_size", key="batch_size", flag="--batch-size", element=int),
        FileOption(name="lambda_", key="lambda", flag="--lambda", element=str, repeated=True),
        FileOption(name="out", key="out", flag="--out", element=Path),
    ]
    raw = {"batch-size": 4, "lambda": {"cnn": 0.5}, "out": "o"}
    values = file_values(Path("f.toml"), [raw], options, "cmd")
    assert values == {"batch_size": 4, "lambda_": ["cnn=0.5"], "out": Path("o")}
    # A later layer (the command's table) wins, whatever spelling either uses.
    layers = [{"batch_size": 4, "lambda": [1, "inn=2"]}, {"batch-size": 5}]
    assert file_values(Path("f.toml"), layers, options, "cmd") == {
        "batch_size": 5,
        "lambda_": ["1", "inn=2"],
    }
    with pytest.raises(UserError, match="cmd has no option 'lambda_kd'"):
        file_values(Path("f.toml"), [{"lambda_kd": 1}], options, "cmd")


# ------------------------------------------------------------------- the same run, two ways


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("config-file")
    train = make_toy_shards(root, "train", per_class=8)
    teacher = make_toy_teacher(root / "cnn.pt")
    store = dump_toy_store(train, teacher, root / "store.zarr", views=1, aug="small", threads=1)
    return {"root": root, "train": train, "store": store}


def _json_run(args: list[str]) -> dict[str, Any]:
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


def test_a_config_file_run_equals_the_same_run_on_the_command_line(
    toy: dict[str, Path], tmp_path: Path
) -> None:
    common = ["--data", str(toy["train"]), "--store", str(toy["store"])]
    settings = ["--epochs", "1", "--batch-size", "8", "--lr", "0.003", "--warmup-epochs", "0"]
    settings += ["--tau", "cnn=2", "--lambda", "0.5", "--device", "cpu", "--workers", "0"]
    settings += ["--threads", "1"]  # more threads than cores only waits on a busy machine
    by_flags = _json_run(["train-student", *common, *settings, "--out", str(tmp_path / "a")])

    config = _write(
        tmp_path / "run.toml",
        f'data = "{toy["train"]}"\nstore = "{toy["store"]}"\nepochs = 1\nbatch_size = 8\n'
        "lr = 0.003\nwarmup-epochs = 0\ntau = {cnn = 2}\nlambda = 0.5\nworkers = 0\n"
        'threads = 1\ndevice = "cuda:7"\n',  # overridden below: the command line wins
    )
    run_b = tmp_path / "b"
    by_file = _json_run(
        ["train-student", "--config", str(config), "--device", "cpu", "--out", str(run_b)]
    )
    assert by_file["weights_sha256"] == by_flags["weights_sha256"]
    assert by_file["steps"] == by_flags["steps"] > 0

    saved = json.loads((run_b / "config.json").read_text(encoding="utf-8"))
    assert saved["sources"]["lr"] == "config-file" and saved["sources"]["tau"] == "config-file"
    assert saved["sources"]["device"] == "command-line" and saved["device"] == "cpu"
    assert saved["sources"]["model"] == "default"
    assert saved["hyperparameters"]["lr"]["from"] == "--lr (config file)"
    # A resumed run may come from the command line alone: sources do not take part.
    again = _json_run(["train-student", *common, *settings, "--out", str(run_b), "--resume"])
    assert again["weights_sha256"] == by_file["weights_sha256"]
