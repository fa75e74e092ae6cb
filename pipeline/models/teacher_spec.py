"""``--teacher NAME=ARCH:CKPT`` or ``NAME=timm:MODEL[:WEIGHTS]``: a teacher named on the command
line (parsed without torch).

``timm:MODEL`` is any timm model; without ``WEIGHTS`` its weights come from timm's offline cache
(see :mod:`.zoo_timm`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..runtime.errors import UserError
from .checkpoint_file import checkpoint_file
from .names import check_architecture

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

    def preflight(self) -> None:
        """Torch-free, before any work: a registered architecture and a checkpoint file (a timm
        model without one takes timm's cache: its loader says what is missing)."""
        check_architecture(self.arch)
        if self.checkpoint is not None:
            checkpoint_file(self.checkpoint)

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


CHECKPOINT_WITH_ARCH_HELP = (
    "Teacher or student checkpoint: a run directory (its final.pt), last.pt, final.pt; or a "
    "published weights file with --arch (required, except for --arch timm:MODEL with weights "
    "in timm's offline cache)."
)
ARCH_HELP = (
    "Architecture of a published weights file: a preset (regnety-600mf, rednet26, ...) or "
    "timm:MODEL; loaded as dump-logits loads a teacher."
)


def check_model_source(checkpoint: Path | None, arch: str | None) -> None:
    """``--checkpoint``/``--arch`` of a scoring command (evaluate, predict): a checkpoint is
    required unless ``arch`` is a timm model, whose weights may come from timm's offline cache.
    Torch-free; the file itself is checked by :meth:`TeacherSpec.preflight` or
    :func:`.checkpoint_file.checkpoint_file`."""
    if checkpoint is None and (arch is None or not arch.startswith("timm:")):
        raise UserError(
            "--checkpoint is required (only --arch timm:MODEL may take its weights from "
            "timm's offline cache)"
        )


def preflight_model_source(checkpoint: Path | None, arch: str | None) -> None:
    """The torch-free refusals of :func:`check_model_source`'s pair: the architecture and the
    file, as dump-logits checks a teacher spec."""
    if arch is not None:
        TeacherSpec(name="teacher", arch=arch, checkpoint=checkpoint).preflight()
    elif checkpoint is not None:
        checkpoint_file(checkpoint)
