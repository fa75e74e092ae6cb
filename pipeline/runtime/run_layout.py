"""The one output layout of every trainer: a run directory (torch-free).

``train-teacher``, ``train-student`` and ``train-cakd`` all write ``--out RUN_DIR``::

    RUN_DIR/last.pt            resumable: the model plus the training state
    RUN_DIR/final.pt           the finished model alone (evaluate, export, teacher specs)
    RUN_DIR/final.safetensors  final.pt's weights and metadata
    RUN_DIR/metrics.jsonl      one JSON record per logged step and per epoch
    RUN_DIR/config.json        every setting, resolved, with where it came from
    RUN_DIR/tb/                with --tensorboard: the event files

Everything that takes a checkpoint takes a run directory too (meaning its ``final.pt``):
:func:`checkpoint_in`.
"""

from __future__ import annotations

import os
from pathlib import Path

LAST = "last.pt"
FINAL = "final.pt"
FINAL_WEIGHTS = "final.safetensors"  # final.pt's weights (models/checkpoint.py weights_file)
METRICS = "metrics.jsonl"
CONFIG = "config.json"
TENSORBOARD = "tb"
RUN_FILES = (LAST, FINAL, FINAL_WEIGHTS, METRICS, CONFIG)
"""The files of one run (``--overwrite`` removes exactly these)."""


def checkpoint_in(path: str | os.PathLike[str]) -> Path:
    """``path`` itself, or for a run directory its finished model ``final.pt``.

    The file need not exist: a loader reports a missing one in its own words.
    """
    target = Path(path)
    return target / FINAL if target.is_dir() else target
