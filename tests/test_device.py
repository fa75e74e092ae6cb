"""Device and CPU-thread policy shared by every stage."""

from __future__ import annotations

import pytest
import torch

from civt_pipe.pipeline.runtime.device import cpu_thread_budget, cpu_threads, resolve_device
from civt_pipe.pipeline.runtime.errors import UserError


def test_thread_budget_leaves_a_core_per_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(8)), raising=False)
    assert cpu_thread_budget(None, workers=3) == 5
    assert cpu_thread_budget(None, workers=12) == 1
    assert cpu_thread_budget(2, workers=3) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun: two ranks share the 8 cores
    assert cpu_thread_budget(None, workers=1) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert cpu_thread_budget(None, workers=1) is None


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
