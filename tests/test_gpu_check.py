"""``bench/gpu_check.py`` runs where the suite runs: on a CPU its CUDA rows are skipped with the
reason, and its CPU rows (stage one with CPU rendering, a replay checking every digest) run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bench_modules import load_bench

gpu_check = load_bench("gpu_check")


def test_gpu_check_runs_on_this_machine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = gpu_check.main(["--smoke", "--json", "--work", str(tmp_path)])
    err = capsys.readouterr().err
    rows = result["rows"]
    assert rows["stage1_cpu_render_views_per_s"] > 0
    assert rows["student_replay_cpu_render_steps_per_s"] > 0
    assert result["cpu_replay_digests_match"] and result["ok"]
    if torch.cuda.is_available():
        assert rows["replay_digests_match"] and rows["cpu_replay_of_gpu_store_refused"]
    else:
        assert set(result["skipped"]) == {
            "stage1_gpu_render_views_per_s",
            "gpu_over_cpu_render",
            "student_replay_gpu_render_steps_per_s",
            "replay_digests_match",
            "cpu_replay_of_gpu_store_refused",
        }
        assert "CUDA is not available" in next(iter(result["skipped"].values()))
        assert "gpu_check: skipping stage1_gpu_render_views_per_s" in err
    # The shards hold JPEG bytes, as nvjpeg needs them.
    assert (tmp_path / "train" / "index.json").read_text().count('"format": "jpg"') == 1
