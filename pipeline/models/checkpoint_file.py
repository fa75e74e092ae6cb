"""Is there a checkpoint file to load at all? Torch-free, so the command line can refuse a
missing, directory or empty checkpoint before torch is imported; :mod:`.checkpoint` asks the
same before it reads one."""

from __future__ import annotations

import os
from pathlib import Path

from ..runtime.errors import UserError

PathLike = str | os.PathLike[str]


def checkpoint_file(path: PathLike) -> Path:
    """``path`` as a file to load; a missing path, a directory or an empty file is a
    :class:`UserError`."""
    target = Path(path)
    if target.is_dir():
        raise UserError(f"checkpoint {target} is a directory, not a checkpoint file")
    if not target.is_file():
        raise UserError(f"checkpoint file {target} does not exist")
    if target.stat().st_size == 0:
        raise UserError(f"{target} is not a readable checkpoint: the file is empty (0 bytes)")
    return target
