"""``bench/thread_defaults.py`` (the ``defaults_vs_best`` row): its grid, environment and ratio
are right (the timings themselves are the bench's, never asserted)."""

from __future__ import annotations

import pytest
from bench_modules import load_bench

thread_defaults = load_bench("thread_defaults")


def test_grid_has_the_default_every_pair_and_the_old_spinning_default() -> None:
    grid = thread_defaults.settings_grid(2)
    assert grid["default"] == ([], {})
    assert grid["threads2_workers1"] == (["--threads", "2", "--workers", "1"], {})
    assert set(grid) == {
        "default",
        "threads1_workers0",
        "threads2_workers0",
        "threads1_workers1",
        "threads2_workers1",
        thread_defaults.OLD_DEFAULT,
    }
    assert grid[thread_defaults.OLD_DEFAULT] == ([], {"GOMP_SPINCOUNT": "300000"})


def test_runs_get_a_new_users_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    env = thread_defaults.user_env()
    assert "OMP_NUM_THREADS" not in env and "OMP_WAIT_POLICY" not in env
    assert env["CIVT_PIPE_NO_PROGRESS"] == "1"


def test_value_is_default_over_the_best_and_the_old_default_is_never_best() -> None:
    rates = {
        "default": 3.0,
        "threads1_workers0": 4.0,
        "threads2_workers0": 2.0,
        thread_defaults.OLD_DEFAULT: 9.0,  # shown, but not a setting a user picks by flags
    }
    row = thread_defaults.condition_result(rates, [2.5, 2.0, 1.0])
    assert row["best"] == "threads1_workers0" and row["best_steps_per_s"] == 4.0
    assert row["value"] == pytest.approx(0.75) and not row["met"]
    assert row["old_default_over_best"] == pytest.approx(2.25)
    rates["default"] = 4.0
    assert thread_defaults.condition_result(rates, [])["met"]
