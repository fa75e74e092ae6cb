"""``civt-pipe study``'s configuration (torch-free: the command line imports it at start-up)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...runtime.errors import UserError
from ...runtime.options import MAX_THREADS, check_choices, check_numbers, option

PLANS: tuple[str, ...] = ("tables", "alignment", "views", "cost")
"""The built-in plans (docs/study.md says what each runs)."""


@dataclass(kw_only=True)
class StudyConfig:
    """What ``civt-pipe study`` runs. The default student epochs (30) are where civt-nano
    converges on the built-in digits at 16 px (docs/study.md: the evidence, and each plan's
    CPU cost at these defaults); every cost scales with ``epochs``, ``teacher_epochs``,
    ``image_size`` and ``subset``.
    """

    data: str = option(help="Training shards: a directory or a brace pattern.")
    val: str = option(help="Test shards every model is evaluated on (same classes).")
    out: Path = option(help="Study directory (runs/, results.json, results.md).", flag="--out")
    plan: str = option("tables", help="Which plan to run.", choices=PLANS)
    seeds: int = option(3, help="Seeds 0..N-1; tables show mean ± std over them.", minimum=1)
    first_seed: int = option(
        0,
        help="Run only seeds S..N-1 of --seeds: to spread one study over machines, give each a "
        "range, then copy their runs/ into one --out and run it with every seed (all reused).",
        minimum=0,
    )
    minor_seeds: int | None = option(
        None,
        help="Seeds of the tables plan's Table 3 and Figure 3: seeds 0..N-1 only (each seed of "
        "them adds 4 students, 4 teachers and 2 stores) [default: every seed].",
        minimum=1,
    )
    epochs: int = option(
        30, help="Student epochs (30: civt-nano converged on digits, docs/study.md).", minimum=1
    )
    teacher_epochs: int = option(
        10, help="Epochs of each (fully trained) teacher (the quickstart's).", minimum=1
    )
    image_size: int = option(16, help="Side of every model's input.", minimum=4)
    views: int | None = option(
        None,
        help="Stored views per image of the tables plan's stores [default: --epochs, a fresh "
        "view every epoch].",
        minimum=1,
    )
    subset: int | None = option(
        None, help="Use only the first N shards of --data [default: all].", minimum=1
    )
    student_subset: int | None = option(
        None,
        help="Stores and students use only the first N shards of the training data, the teachers "
        "all of it (or --subset): a setting where the teachers know more than the student "
        "[default: the same data].",
        minimum=1,
    )
    until_plateau: int | None = option(
        None,
        help="Stop each student once its --val top-1 has not improved for this many epochs "
        "(train-student --until-plateau; --val then also decides when to stop, see "
        "docs/study.md) [default: always --epochs].",
        minimum=1,
    )
    threads: int = option(1, help="Torch CPU threads of every run.", minimum=1, maximum=MAX_THREADS)
    device: str = option("auto", help="auto, cpu, cuda or cuda:N.")
    progress: bool = option(True, help="Draw each stage's progress bars.", flag="")

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        check_numbers(self)
        check_choices(self)
        if self.first_seed >= self.seeds:
            raise UserError(
                f"--first-seed {self.first_seed} leaves no seed of --seeds {self.seeds} "
                f"(seeds {self.first_seed}..{self.seeds - 1})"
            )

    @property
    def seed_range(self) -> range:
        """The seeds this invocation runs."""
        return range(self.first_seed, self.seeds)

    @property
    def table_views(self) -> int:
        """V of the tables plan's stores."""
        return self.views if self.views is not None else self.epochs

    def settings(self, num_classes: int) -> dict[str, Any]:
        """What decides a plan's results (recorded in results.json)."""
        return {
            "data": self.data,
            "val": self.val,
            "subset": self.subset,
            "student_subset": self.student_subset,
            "minor_seeds": self.minor_seeds,
            "until_plateau": self.until_plateau,
            "epochs": self.epochs,
            "teacher_epochs": self.teacher_epochs,
            "image_size": self.image_size,
            "views": self.table_views,
            "num_classes": num_classes,
        }
