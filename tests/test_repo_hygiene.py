"""The promises the repository makes about itself: ruff-clean code, no unfinished markers."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE_DIRS = ("civt_pipe", "pipeline", "cli", "stores", "examples")


def _ruff() -> list[str]:
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert exe is not None, "ruff is a dev dependency; install with .[dev]"
    return [exe]


def test_ruff_check_is_clean() -> None:
    out = subprocess.run([*_ruff(), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format_is_clean() -> None:
    out = subprocess.run(
        [*_ruff(), "format", "--check", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_shipped_code_has_no_unfinished_markers() -> None:
    marker = re.compile(r"raise NotImplementedError|\bTODO\b|\bFIXME\b|\bXXX\b")
    hits = [
        f"{path.relative_to(ROOT)}:{n}"
        for folder in CODE_DIRS
        for path in sorted((ROOT / folder).rglob("*.py"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if marker.search(line)
    ]
    assert not hits, hits
