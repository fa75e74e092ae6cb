"""configs/: the example files run from the repository root after the quickstart and write under
the working directory, never into the source packages."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from civt_pipe.cli.app import app
from civt_pipe.pipeline.models.checkpoint import make_checkpoint, save_checkpoint
from civt_pipe.pipeline.models.factory import create_model
from civt_pipe.pipeline.runtime.config_file import tomllib  # tomli before Python 3.11

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.toml"))
SOURCE_DIRS = {"pipeline", "stores", "cli", "configs", "docs", "tests", "bench"}
"""The repository's own folders: no example may write into them."""
OUTPUTS = {"out"}
INPUTS = {"data", "val", "store", "teacher"}
IMAGENET = {"coadvise.toml", "deit.toml"}
"""Examples of the published ImageNet recipes: their inputs are ImageNet's, not the quickstart's."""


def _paths(value: object) -> list[str]:
    """The file paths in an option's value (a teacher table's values are ARCH:CHECKPOINT)."""
    values = list(value.values()) if isinstance(value, dict) else [value]
    return [str(v).split(":", 1)[-1] for v in values if isinstance(v, str)]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_example_reads_the_quickstart_and_writes_under_the_working_directory(
    config: Path,
) -> None:
    keys = tomllib.loads(config.read_text(encoding="utf-8"))
    for key in OUTPUTS & set(keys):
        for path in _paths(keys[key]):
            parts = Path(path).parts
            assert not Path(path).is_absolute() and ".." not in parts, (key, path)
            assert parts[0] not in SOURCE_DIRS, f"{config.name}: {key} = {path} is a source folder"
    if config.name in IMAGENET:
        return
    for key in INPUTS & set(keys):
        for path in _paths(keys[key]):
            assert path.startswith("quickstart/"), f"{config.name}: {key} = {path}"


@pytest.mark.slow  # digits shards, two untrained nano teachers, one view: ~8 s of CPU
def test_dump_example_runs_from_a_root_holding_the_quickstart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    # In this process (CliRunner), from the root that holds the quickstart: the example's
    # relative paths resolve against the working directory, as they would for a user.
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    made = runner.invoke(
        app, ["make-shards", "digits", "quickstart/data/train", "--split", "train"]
    )
    assert made.exit_code == 0, made.output
    # The quickstart's teachers, untrained: this checks paths and wiring, not accuracy.
    for name in ("cnn", "inn"):
        torch.manual_seed(0)
        model = create_model(f"{name}-nano", num_classes=10, in_chans=1, image_size=16)
        run_dir = tmp_path / "quickstart" / "teachers" / name  # a teacher's run directory
        run_dir.mkdir(parents=True)
        save_checkpoint(run_dir / "final.pt", make_checkpoint(model))
    dumped = runner.invoke(
        app, ["dump-logits", "--config", "configs/dump.toml", "--views", "1", "--threads", "1"]
    )
    assert dumped.exit_code == 0, dumped.output
    assert (tmp_path / "work" / "digits.zarr").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["configs", "quickstart", "work"]
