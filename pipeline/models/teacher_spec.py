"""``--teacher NAME=ARCH:CKPT``: a teacher named on the command line (parsed without torch)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..runtime.errors import UserError
from .checkpoint_file import checkpoint_file
from .names import check_architecture

_TEACHER_RE = re.compile(r"^(?P<name>[^=]+)=(?P<arch>[^:]+):(?P<ckpt>.+)$")
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")


@dataclass(frozen=True, slots=True)
class TeacherSpec:
    """One ``--teacher NAME=ARCH:CKPT``."""

    name: str
    """Short name; becomes the store group ``teachers/<name>`` and the student's token name."""
    arch: str
    """Registry architecture, checked against the checkpoint's own."""
    checkpoint: Path

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise UserError(
                f"teacher name {self.name!r} must start with a letter and use only letters, "
                "digits, '_' and '-'"
            )

    def __str__(self) -> str:
        """``NAME=ARCH:CKPT``, what :meth:`parse` reads back."""
        return f"{self.name}={self.arch}:{self.checkpoint}"

    def preflight(self) -> None:
        """Torch-free, before any work: a registered architecture and a checkpoint file."""
        check_architecture(self.arch)
        checkpoint_file(self.checkpoint)

    @classmethod
    def parse(cls, text: str) -> TeacherSpec:
        """Parse ``NAME=ARCH:CKPT`` (the checkpoint path may itself contain ':')."""
        m = _TEACHER_RE.match(text.strip())
        if m is None:
            raise UserError(f"--teacher {text!r} is not of the form NAME=ARCH:CHECKPOINT")
        return cls(name=m["name"], arch=m["arch"], checkpoint=Path(m["ckpt"]))
