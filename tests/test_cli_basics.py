"""The command line answers --version and --help, and user errors print one line."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from civt_pipe.cli.app import app
from civt_pipe.pipeline import __version__


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
