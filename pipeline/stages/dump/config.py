"""``dump-logits`` configuration: the ``--teacher`` spec, :class:`DumpConfig`, and the defaults
that depend on the data and the machine (augmentation recipe, forward threads).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ...augment.config import AugmentConfig, preset
from ...runtime.errors import UserError

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

    @classmethod
    def parse(cls, text: str) -> TeacherSpec:
        """Parse ``NAME=ARCH:CKPT`` (the checkpoint path may itself contain ':')."""
        m = _TEACHER_RE.match(text.strip())
        if m is None:
            raise UserError(f"--teacher {text!r} is not of the form NAME=ARCH:CHECKPOINT")
        return cls(name=m["name"], arch=m["arch"], checkpoint=Path(m["ckpt"]))


@dataclass(kw_only=True)
class DumpConfig:
    """Everything ``dump-logits`` needs. The same config on an incomplete store resumes it."""

    data: str
    """Shard directory or brace pattern."""
    teachers: tuple[TeacherSpec, ...]
    out: Path
    """The zarr store to create (or resume)."""
    views: int = 4
    """Augmented views per image (V); stage two uses view ``epoch % V``."""
    topk: int = 10
    """Logits kept per (row, view, teacher); capped by nothing — k larger than C is an error."""
    seed: int = 0
    """Global augmentation seed; every view is keyed by (seed, view, key)."""
    batch_size: int = 256
    """Views per teacher forward pass."""
    workers: int = 1
    """DataLoader processes that decode and augment (0: in the main process)."""
    device: str = "auto"
    on_error: Literal["fail", "skip"] = "fail"
    """A sample that cannot be decoded stops the dump (fail) or is recorded and left out (skip)."""
    overwrite: bool = False
    """Replace an existing store instead of refusing (or resuming) it."""
    aug: str = "auto"
    """Augmentation preset: ``auto`` (``small`` for views <= 32 px, else ``deit``), or a name."""
    augment: AugmentConfig | None = None
    """An explicit recipe; overrides ``aug`` (its image size must match the teachers')."""
    chunk_rows: int | None = None
    """Store rows per chunk (default: one chunk per shard)."""
    image_size: int | None = None
    """Input size for teachers given as bare torchvision weights (ours record their own)."""
    threads: int | None = None
    """CPU threads for the teachers' forward passes. None: this rank's share of the cores
    minus one per DataLoader worker (at least 1), unless ``OMP_NUM_THREADS`` is set. More
    threads than free cores makes every forward wait on preempted threads: on a busy 2-core
    machine 2 threads next to a worker ran the nano teachers ~10x slower than 1."""
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.teachers:
            raise UserError("dump-logits needs at least one --teacher NAME=ARCH:CHECKPOINT")
        names = [t.name for t in self.teachers]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise UserError(f"teacher name {dup[0]!r} is given twice; names must be distinct")
        if self.views < 1:
            raise UserError(f"--views must be at least 1, got {self.views}")
        if self.topk < 1:
            raise UserError(f"--topk must be at least 1, got {self.topk}")
        if not 0 <= self.seed < 2**63:
            raise UserError(f"--seed must be in [0, 2**63), got {self.seed}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.workers < 0:
            raise UserError(f"--workers must be 0 or more, got {self.workers}")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads must be at least 1, got {self.threads}")
        if self.on_error not in ("fail", "skip"):
            raise UserError(f"--on-error must be 'fail' or 'skip', got {self.on_error!r}")
        self.out = Path(self.out)


def resolve_augment(cfg: DumpConfig, image_size: int) -> AugmentConfig:
    """The recipe of this dump: explicit config, named preset, or the ``auto`` choice.

    ``auto`` picks ``small`` for views of at most 32 px (the DeiT recipe wipes out most of a
    tiny image: 8 % crops, flips of digits, strong RandAugment) and ``deit`` above.
    """
    if cfg.augment is not None:
        if cfg.augment.image_size != image_size:
            raise UserError(
                f"augment image_size {cfg.augment.image_size} differs from the teachers' "
                f"input size {image_size}"
            )
        return cfg.augment
    name = cfg.aug if cfg.aug != "auto" else ("small" if image_size <= 32 else "deit")
    return preset(name, image_size)
