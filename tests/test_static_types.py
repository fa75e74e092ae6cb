"""Static tools follow our imports: mypy on the whole package, pyright on the code folders.

The folders are the package ``civt_pipe`` only once installed (setuptools maps ``civt_pipe/``
to ``civt_pipe`` and the three code folders to its subpackages), so for mypy the test lays out
that installed layout with links in a temporary directory and checks the package by its real
name; pyright follows the relative imports between the code folders on disk as they are
(``pyrightconfig.json``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_mypy_checks_our_packages_without_errors(tmp_path: Path) -> None:
    package = tmp_path / "civt_pipe"
    package.mkdir()
    for name in ("__init__.py", "py.typed"):
        (package / name).symlink_to(ROOT / "civt_pipe" / name)
    for folder in ("pipeline", "stores", "cli"):
        (package / folder).symlink_to(ROOT / folder, target_is_directory=True)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(tmp_path / "cache"), "-p", "civt_pipe"],
        cwd=tmp_path, env={**os.environ, "MYPYPATH": str(tmp_path)},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Success" in result.stdout


def test_pyright_resolves_every_import_and_finds_no_errors() -> None:
    result = subprocess.run(
        [str(BIN / "pyright"), "--outputjson"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads(result.stdout)
    assert report["summary"]["filesAnalyzed"] > 50
    problems = [
        f"{Path(d['file']).relative_to(ROOT)}:{d['range']['start']['line'] + 1} {d['message']}"
        for d in report["generalDiagnostics"]
        if d["severity"] == "error"
    ]
    assert problems == []
