"""The command line answers --version and --help, user errors print one line, and every JSON
we write is strict JSON."""

from __future__ import annotations

import json
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
