"""The command line answers --version and --help, user errors print one line, and every JSON
we write is strict JSON."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from civt_pipe.cli.app import app
from civt_pipe.cli.common import emit_json
from civt_pipe.pipeline import __version__
from civt_pipe.pipeline.runtime.atomic import append_jsonl, atomic_write_json
from civt_pipe.pipeline.runtime.json_text import json_text


def test_version_prints_package_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"civt-pipe {__version__}"


def test_module_entry_point_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "civt_pipe.cli", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("civt-pipe ")


def test_usage_mistakes_are_one_line_and_no_arguments_still_show_help() -> None:
    for args in (["train-teacher", "--epochs", "abc"], ["evaluate", "--nope"], ["nosuch"]):
        result = CliRunner().invoke(app, args)
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert lines[0].startswith("civt-pipe: error: ") and "--help" in lines[0]
    help_result = CliRunner().invoke(app, ["train-student", "--help"])
    assert help_result.exit_code == 0 and "--store" in help_result.stdout
    bare = CliRunner().invoke(app, [])
    assert "Usage" in bare.output and "civt-pipe: error" not in bare.output


def test_json_outputs_write_non_finite_figures_as_null(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = {"loss": float("nan"), "nested": [1.5, float("inf"), {"x": -float("inf")}]}
    expected = {"loss": None, "nested": [1.5, None, {"x": None}]}
    assert json.loads(json_text(record)) == expected

    def strict(text: str) -> Any:
        return json.loads(text, parse_constant=lambda word: pytest.fail(f"{word} in JSON"))

    append_jsonl(tmp_path / "metrics.jsonl", record)
    atomic_write_json(tmp_path / "config.json", record)
    emit_json(record)
    assert strict((tmp_path / "metrics.jsonl").read_text()) == expected
    assert strict((tmp_path / "config.json").read_text()) == expected
    assert strict(capsys.readouterr().out) == expected


def test_output_that_is_not_a_terminal_never_wraps_a_line() -> None:
    line = "epoch 3 " + "loss 0.1234 " * 20 + "(49.8 s)"
    code = (
        "from civt_pipe.pipeline.runtime.console import info, warn\n"
        f"info({line!r})\nwarn({line!r})\n"
    )
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "80"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == [line, f"warning: {line}"]


@pytest.mark.parametrize("command", ["train-student", "train-teacher", "export", "predict"])
def test_help_reads_at_80_columns(command: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "80", "TERM": "dumb"}
    out = subprocess.run(
        [sys.executable, "-m", "civt_pipe.cli", command, "--help"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert max(map(len, lines)) <= 80
    assert "<bool>" not in out.stdout and "<list[" not in out.stdout and "{" not in lines[0]
    assert "\\[" not in out.stdout  # no markup escapes leaking into plain text
    # Option help starts by column 40, leaving it half the width (typer's rich panels left an
    # 18-character column at the right edge).
    starts = [m.start(2) for x in lines if (m := re.match(r"  (--\S+(?: \S+)?)\s{2,}(\S)", x))]
    assert starts and max(starts) <= 40
    if command == "export":
        assert lines[0] == "Usage: python -m civt_pipe.cli export [OPTIONS] CHECKPOINT OUT"


def test_the_command_list_is_one_line_per_command() -> None:
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "80", "TERM": "dumb"}
    out = subprocess.run(
        [sys.executable, "-m", "civt_pipe.cli", "--help"], capture_output=True, text=True, env=env
    )
    listing = [line for line in out.stdout.split("Commands:")[1].splitlines() if line.strip()]
    names = [line.split()[0] for line in listing]
    assert "predict" in names and "export" in names
    assert all(re.match(r"  [a-z-]+ {2,}\S", line) for line in listing)
