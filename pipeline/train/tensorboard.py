"""TensorBoard scalars from the loop's metric records (``--tensorboard``, extra ``civt-pipe[tb]``).

``metrics.jsonl`` stays the source of truth: :func:`..train.loop.fit` hands every record it
appends there to a :class:`TensorBoardSink` too (main rank only), which writes each number as a
scalar tagged ``<kind>/<name>`` (``step/loss``, ``step/lr``, ``step/images_per_s``,
``epoch/val_top1_cls``...; a record without a ``kind`` is an epoch record) at the record's
global step.

Resume: the sink opens with ``purge_step`` just after the resumed checkpoint's step, so the
scalars a killed run wrote past it are hidden, as :func:`..train.loop.truncate_metrics` drops
them from ``metrics.jsonl``; the rerun then writes those steps again. A fresh run (not resumed)
deletes the event files it finds in the directory first.

Torch-free at import (configs call :func:`require_tensorboard`); torch's writer is imported when
a sink opens.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from ..runtime.errors import UserError

_NOT_SCALARS = frozenset({"kind", "epoch", "step"})
"""Record keys that place a record; they are the axis, not a curve."""

EVENT_FILE_PREFIX = "events.out.tfevents."
"""How TensorBoard event files are named (the ones a fresh run deletes)."""


def require_tensorboard() -> None:
    """Raise a one-line :class:`UserError` unless the ``tensorboard`` package is installed."""
    if importlib.util.find_spec("tensorboard") is None:
        raise UserError("--tensorboard needs the tensorboard package: pip install 'civt-pipe[tb]'")


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The ``{tag: value}`` scalars of one metric record (numbers only, booleans left out)."""
    kind = str(record.get("kind", "epoch"))
    return {
        f"{kind}/{name}": float(value)
        for name, value in record.items()
        if name not in _NOT_SCALARS
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    }


class TensorBoardSink:
    """Writes metric records as TensorBoard scalars under ``log_dir`` (see the module docstring).

    Args:
        log_dir: the event directory (``RUN_DIR/tb``; a teacher's ``CKPT-stem.tb``).
        resumed_step: the global step of the checkpoint a resumed run continues, or None for a
            fresh run (which removes old event files first).
    """

    def __init__(self, log_dir: Path, *, resumed_step: int | None) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        if resumed_step is None and log_dir.is_dir():
            for old in log_dir.glob(EVENT_FILE_PREFIX + "*"):
                old.unlink()
        purge = None if resumed_step is None else resumed_step + 1
        self._writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge)

    def write(self, record: Mapping[str, Any]) -> None:
        """Add the record's scalars at its ``step``."""
        step = int(record.get("step", 0))
        for tag, value in scalars(record).items():
            self._writer.add_scalar(tag, value, global_step=step)

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()

    def __enter__(self) -> TensorBoardSink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
