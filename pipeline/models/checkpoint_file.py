"""Is there a checkpoint file to load at all? Torch-free, so the command line can refuse a
missing, directory or empty checkpoint before torch is imported; :mod:`.checkpoint` asks the
same before it reads one."""

from __future__ import annotations

import os
from pathlib import Path

from ..runtime.errors import UserError
from ..runtime.run_layout import LAST, checkpoint_in

PathLike = str | os.PathLike[str]


def checkpoint_file(path: PathLike) -> Path:
    """``path`` as a file to load: a file, or a run directory's ``final.pt``
    (:func:`..runtime.run_layout.checkpoint_in`); anything missing, a directory or an empty file
    is a :class:`UserError`."""
    target = checkpoint_in(path)
    if target != Path(path) and not target.is_file():
        raise UserError(
            f"run directory {path} has no {target.name} (is the run finished? "
            f"its {LAST} resumes with --resume)"
        )
    if target.is_dir():
        raise UserError(f"checkpoint {target} is a directory, not a checkpoint file")
    if not target.is_file():
        raise UserError(f"checkpoint file {target} does not exist")
    if target.stat().st_size == 0:
        raise UserError(f"{target} is not a readable checkpoint: the file is empty (0 bytes)")
    return target
