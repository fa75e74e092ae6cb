"""``--teacher NAME=ARCH:CKPT`` or ``NAME=timm:MODEL[:WEIGHTS]``: a teacher named on the command
line (parsed without torch).

``timm:MODEL`` is any timm model; without ``WEIGHTS`` its weights come from timm's offline cache
(see :mod:`.zoo_timm`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..runtime.errors import UserError

_TEACHER_RE = re.compile(r"^(?P<name>[^=]+)=(?P<arch>[^:]+):(?P<ckpt>.+)$")
_TIMM_RE = re.compile(r"^(?P<name>[^=]+)=timm:(?P<model>[^:]+)(?::(?P<ckpt>.+))?$")
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")


@dataclass(frozen=True, slots=True)
class TeacherSpec:
    """One ``--teacher NAME=ARCH:CKPT`` (or ``NAME=timm:MODEL[:WEIGHTS]``)."""

    name: str
    """Short name; becomes the store group ``teachers/<name>`` and the student's token name."""
    arch: str
    """Registry architecture (or ``timm:MODEL``), checked against the checkpoint's own."""
    checkpoint: Path | None
    """The weights; None only for a timm model whose weights are in timm's offline cache."""

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise UserError(
                f"teacher name {self.name!r} must start with a letter and use only letters, "
                "digits, '_' and '-'"
            )
        if self.checkpoint is None and not self.arch.startswith("timm:"):
            raise UserError(f"teacher {self.name!r} ({self.arch}) needs a checkpoint file")

    def __str__(self) -> str:
        """``NAME=ARCH:CKPT`` (``NAME=timm:MODEL`` without weights), what :meth:`parse` reads."""
        if self.checkpoint is None:
            return f"{self.name}={self.arch}"
        return f"{self.name}={self.arch}:{self.checkpoint}"

    @classmethod
    def parse(cls, text: str) -> TeacherSpec:
        """Parse ``NAME=ARCH:CKPT`` or ``NAME=timm:MODEL[:WEIGHTS]`` (the checkpoint path may
        itself contain ':')."""
        t = _TIMM_RE.match(text.strip())
        if t is not None:
            ckpt = Path(t["ckpt"]) if t["ckpt"] else None
            return cls(name=t["name"], arch=f"timm:{t['model']}", checkpoint=ckpt)
        m = _TEACHER_RE.match(text.strip())
        if m is None:
            raise UserError(
                f"--teacher {text!r} is not of the form NAME=ARCH:CHECKPOINT or "
                "NAME=timm:MODEL[:WEIGHTS]"
            )
        return cls(name=m["name"], arch=m["arch"], checkpoint=Path(m["ckpt"]))
