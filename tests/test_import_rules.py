"""Who may import whom (docs/architecture.md), checked on the source tree with ``ast``.

Every import counts, also the ones inside functions: a cycle hidden in a function body is still
a cycle a reader has to untangle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {
    "civt_pipe": "civt_pipe",
    "pipeline": "civt_pipe.pipeline",
    "stores": "civt_pipe.stores",
    "cli": "civt_pipe.cli",
}
"""Code folder -> its package once installed (pyproject's package-dir map)."""


def _module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the code folders."""
    found: dict[str, Path] = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


MODULES = _module_files()


def _package_of(module: str) -> str:
    path = MODULES[module]
    return module if path.name == "__init__.py" else module.rsplit(".", 1)[0]


def _imports(module: str) -> Iterator[tuple[str, int, bool]]:
    """(imported module of ours, line, relative?) for every import statement in ``module``."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("civt_pipe"):
                    yield alias.name, node.lineno, False
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module and node.module.startswith("civt_pipe"):
                    base = node.module
                    yield base, node.lineno, False
                continue
            package = _package_of(module).split(".")
            base_parts = package[: len(package) - (node.level - 1)]
            base = ".".join(base_parts + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield (sub if sub in MODULES else base), node.lineno, True


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for target, _, _ in _imports(module):
            if target in MODULES and target != module:
                graph[module].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _stage_of(module: str) -> str | None:
    """``civt_pipe.pipeline.stages.X...`` -> ``X`` (a stage is a module or package in stages/)."""
    prefix = "civt_pipe.pipeline.stages."
    if not module.startswith(prefix):
        return None
    return module[len(prefix) :].split(".")[0]


def test_the_rules_see_the_tree() -> None:
    assert "civt_pipe.stores.logit_store" in MODULES
    assert "civt_pipe.cli.app" in MODULES
    assert "civt_pipe" in MODULES and "civt_pipe.pipeline.api" in MODULES
    assert sum(1 for m in MODULES if _stage_of(m)) >= 4
    assert any(_imports("civt_pipe.cli.app"))


def test_no_import_cycles_between_our_modules() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_code_imports_itself_relatively(module: str) -> None:
    absolute = [line for _, line, relative in _imports(module) if not relative]
    assert absolute == [], f"{MODULES[module]}: absolute civt_pipe imports at lines {absolute}"


def test_pipeline_never_imports_the_cli() -> None:
    bad = [
        (m, target)
        for m in MODULES
        if m.startswith("civt_pipe.pipeline")
        for target, _, _ in _imports(m)
        if target.startswith("civt_pipe.cli")
    ]
    assert bad == []


def test_stages_never_import_each_other_and_only_workflows_and_cli_import_stages() -> None:
    bad = []
    for module in MODULES:
        for target, line, _ in _imports(module):
            stage = _stage_of(target)
            if stage is None:
                continue
            own = _stage_of(module)
            allowed = (
                own == stage
                or module.startswith("civt_pipe.pipeline.workflows")
                or module.startswith("civt_pipe.cli")
            )
            if not allowed:
                bad.append(f"{MODULES[module].relative_to(ROOT)}:{line} imports {target}")
    assert bad == []


def test_the_api_is_a_facade_over_the_rooms_that_only_the_top_package_imports() -> None:
    """``civt_pipe`` re-exports ``pipeline/api``; the API builds on the rooms below the stages
    (never a stage, workflow or command), and no room imports the API back."""
    api = "civt_pipe.pipeline.api"
    assert {t for t, _, _ in _imports("civt_pipe")} == {api}
    below = [
        f"{m} imports {t}"
        for m in MODULES
        if m.startswith(api)
        for t, _, _ in _imports(m)
        if t.startswith(
            ("civt_pipe.pipeline.stages", "civt_pipe.pipeline.workflows", "civt_pipe.cli")
        )
    ]
    above = [
        f"{m} imports {t}"
        for m in MODULES
        if m != "civt_pipe" and not m.startswith(api)
        for t, _, _ in _imports(m)
        if t.startswith(api)
    ]
    assert below == [] and above == []


def test_the_command_line_starts_without_torch() -> None:
    """``civt-pipe --help`` must stay instant: options come from torch-free config modules, and
    the ``civt_pipe`` package above them imports its API names only when one is used."""
    import subprocess
    import sys

    code = (
        "import sys, civt_pipe, civt_pipe.cli.app\n"
        "assert civt_pipe.__all__ and 'open_store' in dir(civt_pipe)\n"
        "heavy = [m for m in ('torch', 'torchvision', 'zarr', 'webdataset') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
