"""The store is a leaf (docs/architecture.md): no module in ``stores/`` imports the pipeline (or the
CLI), and what a user can do wrong with a store still ends as one clean line."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
import pytest
from store_helpers import make_spec
from typer.testing import CliRunner

from civt_pipe.cli.app import app
from civt_pipe.pipeline.augment.config import preset
from civt_pipe.pipeline.data import index
from civt_pipe.pipeline.data.planning import ShardRows, plan_training
from civt_pipe.pipeline.replay.segments import ViewSource, iter_view_batches
from civt_pipe.pipeline.runtime.errors import USER_ERRORS, UserError
from civt_pipe.stores import schema
from civt_pipe.stores.errors import StoreError, StoreVersionError
from civt_pipe.stores.logit_store import LogitStore

STORES = Path(schema.__file__).resolve().parent
ALLOWED_THIRD_PARTY = {"numpy", "zarr", "numcodecs", "torch", "fsspec"}


def foreign_imports(source: str) -> list[str]:
    """The imports of a ``stores/`` module that reach outside the leaf, as written."""
    bad: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level >= 2:  # `from ..x` leaves the stores package
                bad.append("." * node.level + (node.module or ""))
                continue
            names = [] if node.level == 1 else [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top not in ALLOWED_THIRD_PARTY and top not in sys.stdlib_module_names:
                bad.append(name)
    return bad


@pytest.mark.parametrize(
    ("source", "flagged"),
    [
        ("from ..pipeline.runtime.errors import UserError", ["..pipeline.runtime.errors"]),
        ("from .. import pipeline", [".."]),
        ("import civt_pipe.pipeline.runtime.console", ["civt_pipe.pipeline.runtime.console"]),
        ("def f():\n    from rich.table import Table", ["rich.table"]),
        ("from civt_pipe.pipeline import errors", ["civt_pipe.pipeline"]),
        ("from .schema import round_up\nimport numpy as np\nimport zarr.codecs", []),
    ],
)
def test_the_checker_flags_what_leaves_the_leaf(source: str, flagged: list[str]) -> None:
    assert foreign_imports(source) == flagged


def test_no_store_module_imports_outside_the_leaf() -> None:
    modules = sorted(STORES.glob("*.py"))
    assert len(modules) >= 6  # the glob really found the store's modules
    found = {p.name: foreign_imports(p.read_text()) for p in modules}
    assert {name: bad for name, bad in found.items() if bad} == {}


def test_store_errors_are_user_errors_for_the_pipeline_and_the_cli(tmp_path: Path) -> None:
    assert StoreError in USER_ERRORS and issubclass(StoreVersionError, StoreError)
    result = CliRunner().invoke(app, ["inspect-store", str(tmp_path / "nowhere.zarr")])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"civt-pipe: error: no logit store at {tmp_path}/nowhere.zarr"
    ]


def test_a_store_error_in_a_stream_worker_ends_as_one_user_error(tmp_path: Path) -> None:
    """The worker's failure capture must catch the store's errors too, or a DataLoader worker
    would die with a traceback instead of one line."""
    path = tmp_path / "s.zarr"
    LogitStore.create(path, make_spec())
    rows = [
        ShardRows(
            name="other.tar",
            path=str(tmp_path / "other.tar"),
            count=4,
            valid=np.arange(4, dtype=np.int64),
        )
    ]
    plan = plan_training(
        rows, seed=0, epoch=0, rank=0, world_size=1, batch_size=2, shuffle_buffer=4
    )
    source = ViewSource(
        aug=preset("small", 8), seed=0, num_classes=10, channels=1, store=LogitStore.open(path)
    )
    with pytest.raises(UserError, match=r"^shard 'other.tar' is not in logit store"):
        next(iter_view_batches(source, rows, plan, view=0))


def test_one_key_digest_formula() -> None:
    assert index.key_digest is schema.key_digest
    # sha256 of "a\nb": shard indexes and finalized stores on disk hold such digests, so the
    # formula may not change.
    want = "7e18f737311b2dc3b2f269dd78396b0351f14fb66efa879f768cb23181883c78"
    assert schema.key_digest(["a", "b"]) == want
