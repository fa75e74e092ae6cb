"""``export``'s configuration: which checkpoint, which file form, which head.

Torch-free, so the command line builds its options without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...models.checkpoint_file import checkpoint_file
from ...runtime.errors import UserError
from ...runtime.options import check_choices, option

EXPORT_FORMATS: tuple[str, ...] = ("timm", "safetensors", "torchscript", "onnx")
"""The file forms ``export`` writes (see docs/export.md for which heads each carries)."""

MANIFEST_SUFFIX = ".json"


def manifest_file(out: Path) -> Path:
    """The JSON written beside an export: OUT's whole name plus ``.json``
    (``civt.safetensors`` → ``civt.safetensors.json``), so exports of one checkpoint in several
    forms side by side never share a manifest."""
    return out.with_name(out.name + MANIFEST_SUFFIX)


@dataclass(kw_only=True, slots=True)
class ExportConfig:
    """What ``civt-pipe export`` runs."""

    checkpoint: Path = option(
        help="Checkpoint to export: a run directory (its final.pt), last.pt, .safetensors..."
    )
    out: Path = option(help="File to write; OUT.json beside it describes it.")
    format: str = option(
        "safetensors",
        help="timm, safetensors, torchscript or onnx (see docs/export.md).",
        choices=EXPORT_FORMATS,
    )
    head: str | None = option(
        None,
        help="Students: cls, mean or a teacher's name (default: the model's inference head). "
        "Teachers have one output: leave it out.",
    )
    overwrite: bool = option(False, help="Replace an existing OUT and its .json.")

    def __post_init__(self) -> None:
        self.checkpoint = Path(self.checkpoint)
        self.out = Path(self.out)
        check_choices(self)
        if self.out.suffix == MANIFEST_SUFFIX:
            raise UserError(
                f"{self.out}: the export cannot end in {MANIFEST_SUFFIX}, the suffix of the "
                "manifest written beside it; use e.g. .safetensors, .pt, .ts or .onnx"
            )
        if self.head == "":
            raise UserError("--head is empty; give cls, mean or a teacher's name")

    def preflight(self) -> None:
        """The refusals that need no data, torch-free (run by the command line before it
        imports the stage)."""
        checkpoint_file(self.checkpoint)
