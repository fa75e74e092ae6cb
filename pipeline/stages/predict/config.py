"""``predict``'s configuration: which checkpoint, which shards, which file and what goes in it.

Torch-free, so the command line builds its options without loading torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ...data.imageio import DECODER_CHOICES, DECODER_HELP
from ...data.shard_set import check_shard_spec
from ...models.teacher_spec import (
    ARCH_HELP,
    CHECKPOINT_WITH_ARCH_HELP,
    check_model_source,
    preflight_model_source,
)
from ...runtime.device import check_device
from ...runtime.errors import UserError
from ...runtime.options import MAX_THREADS, MAX_WORKERS, check_choices, check_numbers, option
from ...runtime.precision import PRECISION_CHOICES, PRECISION_HELP, check_precision

PREDICT_SUFFIXES: tuple[str, ...] = (".jsonl", ".csv", ".npz", ".npy")
"""The forms ``predict`` writes, chosen by OUT's suffix (docs/commands.md#predict)."""


@dataclass(kw_only=True, slots=True)
class PredictConfig:
    """What ``civt-pipe predict`` runs."""

    checkpoint: Path | None = option(None, help=CHECKPOINT_WITH_ARCH_HELP)
    arch: str | None = option(None, help=ARCH_HELP)
    data: str = option(help="Shards to predict: a directory or a brace pattern.")
    out: Path = option(help="File to write: .jsonl, .csv, .npz or .npy (see docs/commands.md).")
    head: str | None = option(
        None,
        help="Only this head: cls, mean or a teacher's name (default: every head; .npy: the "
        "model's inference head).",
    )
    topk: int = option(5, help="Classes per head and row, best first.", minimum=1)
    logits: bool = option(False, help="Also write every class's logit per head.")
    batch_size: int = option(256, help="Samples per batch.", minimum=1)
    device: str = option("auto", help="auto, cpu, cuda or cuda:N.")
    precision: str = option("auto", help=PRECISION_HELP, choices=PRECISION_CHOICES)
    workers: int = option(0, help="Data-loading processes.", minimum=0, maximum=MAX_WORKERS)
    decoder: str = option("auto", help=DECODER_HELP, choices=DECODER_CHOICES)
    threads: int | None = option(
        None,
        help="Torch CPU threads (default: free cores minus workers).",
        minimum=1,
        maximum=MAX_THREADS,
    )
    overwrite: bool = option(False, help="Replace an existing OUT.")

    def __post_init__(self) -> None:
        if self.checkpoint is not None:
            self.checkpoint = Path(self.checkpoint)
        check_model_source(self.checkpoint, self.arch)
        self.out = Path(self.out)
        self.data = os.fspath(self.data)
        check_numbers(self)
        check_choices(self)
        if self.out.suffix not in PREDICT_SUFFIXES:
            raise UserError(
                f"{self.out}: predict writes {', '.join(PREDICT_SUFFIXES)} (chosen by the "
                "suffix); give OUT one of them"
            )
        if self.head == "":
            raise UserError("--head is empty; give cls, mean or a teacher's name")

    def preflight(self) -> None:
        """The refusals that need no data, torch-free (run by the command line before it
        imports the stage)."""
        # Settings before paths: a wrong device or precision is named whatever the paths say.
        check_device(self.device)
        check_precision(self.precision, self.device)
        preflight_model_source(self.checkpoint, self.arch)
        check_shard_spec(self.data)
