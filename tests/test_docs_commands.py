"""The command blocks of README.md and docs/ run as written (after the README's set-up).

Every line of every ```bash block is one command (``\\`` continues it). Each is either run —
verbatim, or with arguments appended that make it cheaper (the last value of an option wins,
so ``--epochs 1`` after ``--epochs 4`` trains one epoch of the same command) — or listed in
:data:`SKIPPED` with the reason. A command no rule knows runs verbatim, so a new command in the
docs is checked by default. Each file's runnable commands form one bash script, run in a fresh
directory that holds the repository's ``.venv`` and ``configs`` (so nothing is written into the
checkout), with ``set -e``: the first failure names its file and command.

README.md must activate the venv itself (its PATH here lacks the venv); docs/ pages assume it
is active, as the README says. Budget: about a minute of CPU (the README's digits pipeline,
with one epoch per training and one view per image).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
VENV_BIN = Path(sys.executable).parent

SKIPPED: tuple[tuple[str, str], ...] = (
    (r"^python3 -m venv ", "the set-up itself: the environment this test runs in"),
    (r"-m pytest", "the test suite, of which this test is a part"),
    (r"civt-pipe quickstart", "about 10 minutes; tests/test_quickstart.py runs it small"),
    (r"civt-pipe study ", "a plan of experiments, hours; tests/test_study.py runs plans small"),
    (r"\bS\b|MODE|ROW", "a template: S, MODE, ROW and ROW_OPTIONS stand for values"),
    (r"bench/", "a measurement, minutes; bench/ is run by hand"),
    (r"--format onnx", "an ONNX export takes ~15 s of CPU here; tests/test_export.py runs it"),
)
"""``(pattern, reason)``: commands matching ``pattern`` (re.search) are not run."""

SKIPPED_BLOCKS: tuple[tuple[str, str], ...] = (
    (r"/path/to/imagenet", "the ImageNet block: needs ImageNet (and GPUs for torchrun)"),
)
"""``(pattern, reason)``: every command of a block holding a match is not run."""

SKIPPED_PAGES: dict[str, str] = {
    "results.md": "records how each measured figure was made (minutes to hours a command); "
    "the README's block runs the same commands cheaply",
}

CHEAPER: tuple[tuple[str, tuple[str, ...]], ...] = (
    (r"civt-pipe train-teacher ", ("--epochs", "1")),
    (r"civt-pipe train-student ", ("--epochs", "1")),
    (r"civt-pipe dump-logits ", ("--views", "1")),
)
"""``(pattern, arguments)``: appended to matching commands (the last value wins)."""


@dataclass(frozen=True)
class Command:
    page: str
    line: int
    text: str
    block: str
    """Every command of its block, one a line."""

    def skip_reason(self) -> str | None:
        if self.page in SKIPPED_PAGES:
            return SKIPPED_PAGES[self.page]
        for pattern, why in SKIPPED_BLOCKS:
            if re.search(pattern, self.block):
                return why
        return next((why for pattern, why in SKIPPED if re.search(pattern, self.text)), None)

    def script_line(self) -> str:
        extra = next((args for pattern, args in CHEAPER if re.search(pattern, self.text)), ())
        return " ".join([self.text, *extra])


def commands(page: Path) -> list[Command]:
    """The commands of ``page``'s ```bash blocks, continuation lines joined, comments dropped."""
    found: list[Command] = []
    block: list[tuple[int, str]] = []
    inside, pending, start = False, "", 0
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith("```"):
            if inside and block:
                text = "\n".join(t for _, t in block)
                found += [Command(page.name, n, t, text) for n, t in block]
            block = []
            inside = line.strip() in ("```bash", "```sh", "```shell") and not inside
            continue
        if not inside:
            continue
        text = line.split(" #", 1)[0].rstrip() if not line.lstrip().startswith("#") else ""
        if not text and not pending:
            continue
        if not pending:
            start = number
        pending += text.strip() if not pending else " " + text.strip()
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        block.append((start, pending))
        pending = ""
    return found


ALL = [c for page in PAGES for c in commands(page)]


def test_the_docs_hold_commands_and_every_skip_has_a_reason() -> None:
    assert ALL, "no command blocks found"
    readme = [c for c in ALL if c.page == "README.md"]
    # Exactly two set-up commands, the first a fresh venv.
    setup = readme[:2]
    assert setup[0].text.startswith("python3 -m venv") and "-m pytest" in setup[1].text
    skipped = {c.text: c.skip_reason() for c in ALL if c.skip_reason()}
    ran = [c for c in ALL if not c.skip_reason()]
    assert ran and all(reason for reason in skipped.values())
    # What is skipped, on purpose, shows in the test log (-rA / -s).
    for c in ALL:
        if c.skip_reason():
            print(f"skipped {c.page}:{c.line}: {c.text[:60]}... ({c.skip_reason()})")


def _script(page: str) -> str:
    lines = ["set -euo pipefail"]
    for c in ALL:
        if c.page == page and not c.skip_reason():
            lines.append(f"echo '+ {page}:{c.line}' >&2")
            lines.append(c.script_line())
    return "\n".join(lines) + "\n"


RUN_PAGES = sorted({c.page for c in ALL if not c.skip_reason()})


@pytest.mark.slow  # the README's digits pipeline with one epoch and view: about a minute of CPU
# A minute of CPU took 7-10 minutes of wall time on the loaded 2-core build machine.
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("page", RUN_PAGES)
def test_command_blocks_run_as_written(page: str, tmp_path: Path) -> None:
    root, home = tmp_path / "root", tmp_path / "home"
    root.mkdir()
    home.mkdir()
    for name in (".venv", "configs"):
        (root / name).symlink_to(ROOT / name)
    env = {
        "HOME": str(home),
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "OMP_NUM_THREADS": "1",
        "CIVT_PIPE_NO_PROGRESS": "1",
        "MPLBACKEND": "Agg",
    }
    if page != "README.md":
        env["PATH"] = f"{VENV_BIN}:{env['PATH']}"  # docs/ assume the README's activated venv
    for key in ("TMPDIR", "LANG"):
        if key in os.environ:
            env[key] = os.environ[key]
    done = subprocess.run(
        ["bash", "-c", _script(page)], cwd=root, env=env, capture_output=True, text=True
    )
    ran = [line for line in done.stderr.splitlines() if line.startswith("+ ")]
    assert done.returncode == 0, f"{ran[-1] if ran else page} failed:\n{done.stderr[-3000:]}"
    if page == "README.md":
        # The README's pipeline left what it promises, under the working directory only.
        work = root / "work"
        assert (work / "run" / "final.pt").is_file() and (work / "run" / "plot.png").is_file()
        rows = (work / "predictions.jsonl").read_text().splitlines()
        assert len(rows) == 359
        assert sorted(p.name for p in root.iterdir()) == [".venv", "configs", "work"]
