"""Shared test settings: no progress bars, deterministic torch on a small thread budget."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("CIVT_PIPE_NO_PROGRESS", "1")


@pytest.fixture(autouse=True)
def _deterministic_torch() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
