"""Device and CPU-thread policy shared by every stage."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from civt_pipe.pipeline.runtime import device
from civt_pipe.pipeline.runtime.device import cpu_thread_budget, cpu_threads, resolve_device
from civt_pipe.pipeline.runtime.errors import UserError


def test_thread_budget_leaves_a_core_per_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(8)), raising=False)
    monkeypatch.setattr(device, "_busy_cores", lambda: 0)
    assert cpu_thread_budget(None, workers=3) == 5
    assert cpu_thread_budget(None, workers=12) == 1
    assert cpu_thread_budget(2, workers=3) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun: two ranks share the 8 cores
    assert cpu_thread_budget(None, workers=1) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert cpu_thread_budget(None, workers=1) is None


def test_thread_budget_leaves_the_cores_other_work_keeps_busy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(2)), raising=False)
    monkeypatch.setattr(device, "_busy_cores", lambda: 0)
    assert cpu_thread_budget(None, workers=0) == 2  # idle: every core
    monkeypatch.setattr(device, "_busy_cores", lambda: 1)  # one CPU-bound process
    assert cpu_thread_budget(None, workers=0) == 1
    monkeypatch.setattr(device, "_busy_cores", lambda: 9)  # never below one thread
    assert cpu_thread_budget(None, workers=0) == 1
    assert cpu_thread_budget(2, workers=0) == 2  # --threads wins


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="measures through /proc (Linux)")
def test_busy_cores_sees_a_cpu_bound_process_and_not_this_one() -> None:
    """A spinning child counts as one busy core; this process's own work does not."""
    alone = device._busy_cores(window=0.5)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        beside = device._busy_cores(window=0.5)
    finally:
        hog.kill()
        hog.wait()
    assert beside >= min(alone + 1, len(os.sched_getaffinity(0))), (alone, beside)


def test_cpu_threads_sets_then_restores_torch_threads() -> None:
    before = torch.get_num_threads()
    with cpu_threads(1, workers=0, device=torch.device("cpu")):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_cuda_request_without_cuda_is_user_error() -> None:
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match="unknown device"):
        resolve_device("tpu9")


def test_openmp_defaults_are_set_unless_the_user_chose() -> None:
    from civt_pipe.pipeline.runtime.openmp import OPENMP_DEFAULTS, set_openmp_defaults

    env: dict[str, str] = {}
    assert set_openmp_defaults(env) == OPENMP_DEFAULTS
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert set_openmp_defaults(env) == {"KMP_BLOCKTIME": "0"}
    assert env["OMP_WAIT_POLICY"] == "ACTIVE"
    env = {"GOMP_SPINCOUNT": "300000"}  # the user's own spin tuning: left alone
    assert set_openmp_defaults(env) == {} and env == {"GOMP_SPINCOUNT": "300000"}


def test_cli_sets_the_wait_policy_before_torch_loads() -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "KMP_BLOCKTIME")}
    # A fresh process: the policy must be in the environment when the command imports torch.
    code = (
        "import os, sys; from civt_pipe.cli import app; "
        "app.app.command('probe')(lambda: print(os.environ.get('OMP_WAIT_POLICY'), "
        "'torch' in sys.modules)); sys.argv = ['civt-pipe', 'probe']; app.main()"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["PASSIVE", "False"]
