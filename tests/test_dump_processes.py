"""dump-logits as real processes: two torchrun ranks equal one rank; SIGKILL, rerun, same store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_dump import DumpFixture, assert_same_store, build_fixture
from typer.testing import CliRunner

from civt_pipe.cli.app import app
from civt_pipe.pipeline.stages.dump.run import run_dump
from civt_pipe.stores.logit_store import LogitStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> DumpFixture:
    base = build_fixture(tmp_path_factory.mktemp("dump-proc"))
    # Three shards: an uneven split over two ranks.
    data = str(base.root / "train" / "train-{000000..000002}.tar")
    return DumpFixture(root=base.root, data=data, teachers=base.teachers)


@pytest.fixture(scope="module")
def reference(fx: DumpFixture) -> Path:
    """One process, one DataLoader worker: the uninterrupted run everything is compared to."""
    out = fx.root / "reference.zarr"
    run_dump(fx.config(out, workers=1))
    return out


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(CIVT_PIPE_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    return env


def test_two_torchrun_ranks_write_the_same_store_as_one(
    fx: DumpFixture, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "two-ranks.zarr"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "civt_pipe.cli",
        *fx.cli_args(out, "--batch-size", "96", "--device", "cpu"),
    ]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 rank(s)" in proc.stderr, proc.stderr[-2000:]
    assert_same_store(reference, out, exact=True)
    # Rank 0 alone reports: one summary line, not one per rank.
    assert proc.stderr.count("wrote ") == 1, proc.stderr[-2000:]


def _written(out: Path) -> int:
    try:
        return int(LogitStore.open(out).written_flags().sum())
    except Exception:  # not created yet, or caught mid-creation
        return 0


def test_sigkill_mid_dump_then_rerun_equals_uninterrupted_run(
    fx: DumpFixture, tmp_path: Path
) -> None:
    out = tmp_path / "killed.zarr"
    # Small batches and more work per shard (4 views) keep the run long enough to catch it.
    cmd = [sys.executable, "-m", "civt_pipe.cli", *fx.cli_args(out, "--workers", "1")]
    cmd[cmd.index("--views") + 1] = "4"
    proc = subprocess.Popen(
        [*cmd, "--batch-size", "16"],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its DataLoader worker dies with it (one process group)
    )
    try:
        deadline = time.monotonic() + 240
        while _written(out) < 1:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the dump wrote no shard in time"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    store = LogitStore.open(out)
    assert not store.is_finalized
    written = int(store.written_flags().sum())
    assert 1 <= written < len(store.shards), "the kill must land mid-dump"

    # The rerun in this process: only the killed run needs a process of its own.
    rerun = CliRunner().invoke(app, [*cmd[3:], "--batch-size", "48", "--json"])
    assert rerun.exit_code == 0, rerun.output[-3000:]
    assert f"resuming after {written} written" in rerun.stderr

    full = tmp_path / "uninterrupted.zarr"
    run_dump(fx.config(full, views=4, workers=0))
    assert_same_store(full, out)
