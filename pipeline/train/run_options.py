"""The options every trainer shares, declared once, and the rules they follow (torch-free).

``TeacherTrainConfig``, ``StudentTrainConfig`` and ``CakdTrainConfig`` all derive from
:class:`RunOptions`, so ``--val``, ``--resume``, ``--overwrite``, ``--save-every``,
``--precision``, ``--compile``, ``--tensorboard`` (and ``--config``, which every config command
has) are one declaration with one help text and one meaning. The three rules below are the only
place a trainer turns its batch, rate and warm-up into numbers:

- ``--batch-size`` is **per rank** (the DeiT/timm convention): a run under ``torchrun`` with W
  ranks takes ``batch × W`` images per optimizer step (:data:`BATCH_SIZE_HELP`);
- a recipe's learning rate is stated for a global batch of :data:`LR_BASE_BATCH` images and
  scales linearly with the global batch (:func:`scaled_lr`); a ``--lr`` given is used as is;
- warm-up lasts ``min(warm-up epochs, a fifth of the run)`` (:func:`warmup_steps_for`), so a
  short run still decays.

docs/commands.md "Options every trainer shares" is :func:`shared_options_markdown` (a test
keeps the two equal).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..data.shard_set import check_shard_spec
from ..runtime.device import check_device
from ..runtime.errors import UserError
from ..runtime.options import MAX_THREADS, flag_of, option, option_info
from ..runtime.precision import (
    COMPILE_HELP,
    PRECISION_CHOICES,
    PRECISION_HELP,
    check_precision,
)

LR_BASE_BATCH = 512
"""The global batch every recipe states its learning rate for (DeiT's ``lr × batch / 512``)."""

BATCH_SIZE_HELP = "Images per step and rank (global batch = this × ranks)."
"""The one help text of every trainer's ``--batch-size``."""

WARMUP_RULE = "at most a fifth of the run"


def scaled_lr(lr_at_base: float, global_batch: int) -> float:
    """A recipe's rate (stated for :data:`LR_BASE_BATCH` images) at ``global_batch`` images."""
    return lr_at_base * global_batch / LR_BASE_BATCH


def warmup_steps_for(warmup_epochs: float, epochs: int, steps_per_epoch: int) -> int:
    """Warm-up in steps, clamped to a fifth of the run so short runs still decay."""
    return round(min(warmup_epochs, epochs / 5) * steps_per_epoch)


@dataclass(kw_only=True)
class RunOptions:
    """What every trainer's config holds with the same flag, help and meaning.

    The output paths, validation data and machinery may change on ``--resume``; the precision
    too, because what it resolves to on the device is part of the run's identity and must
    match (the skeleton records it).
    """

    data: str = option(help="Training shards: directory or pattern.", resume="may-change")
    out: str = option(
        help="Run directory (last.pt, final.pt, final.safetensors, metrics.jsonl, config.json).",
        resume="may-change",
    )
    val: str | None = option(
        None,
        help="Validation shards, evaluated every epoch (same classes as --data).",
        resume="may-change",
    )
    until_plateau: int | None = option(
        None,
        help="Stop once the --val top-1 has not improved for this many epochs; the learning-rate "
        "schedule stays laid out for --epochs [default: off].",
        minimum=1,
    )
    resume: bool = option(
        False, help="Continue the run in --out from its last.pt.", resume="may-change"
    )
    overwrite: bool = option(
        False, help="Start over in a --out that holds a run.", resume="may-change"
    )
    save_every: int = option(
        0,
        help="Also checkpoint every N steps (0: epoch ends only).",
        minimum=0,
        resume="may-change",
    )
    precision: str = option(
        "auto", help=PRECISION_HELP, choices=PRECISION_CHOICES, resume="may-change"
    )
    compile: bool = option(False, help=COMPILE_HELP, resume="may-change")
    tensorboard: bool = option(
        False,
        help="Also write the metrics as TensorBoard scalars to RUN_DIR/tb (civt-pipe[tb]).",
        resume="may-change",
    )
    device: str = option("auto", help="auto, cpu, cuda or cuda:N.", resume="may-change")
    threads: int | None = option(
        None,
        help="Torch CPU threads [default: free cores minus workers].",
        minimum=1,
        maximum=MAX_THREADS,
        resume="may-change",
    )

    def preflight(self) -> None:
        """The refusals of the shared options that need no data, torch-free: the command line
        runs a config's ``preflight`` before it imports the stage (and torch); a trainer's
        config adds its own (architecture, checkpoints) and calls this."""
        # Settings before paths: a wrong device or precision is named whatever the paths say.
        check_device(self.device)
        check_precision(self.precision, self.device)
        check_shard_spec(self.data)
        if self.val is not None:
            check_shard_spec(self.val)

    def check_run_options(self) -> None:
        """The checks of the shared options (each trainer's ``__post_init__`` calls it)."""
        if self.tensorboard:
            from .tensorboard import require_tensorboard

            require_tensorboard()
        if self.resume and self.overwrite:
            raise UserError("--resume and --overwrite contradict each other; pick one")
        if self.until_plateau is not None and not self.val:
            raise UserError("--until-plateau needs --val: the top-1 it watches")


def shared_options_markdown() -> str:
    """The "Options every trainer shares" section of docs/commands.md."""
    lines = [
        "| option | meaning |",
        "|---|---|",
        f"| `--batch-size` | {BATCH_SIZE_HELP} |",
        f"| `--lr` | Peak learning rate; a recipe's rate is stated for a global batch of "
        f"{LR_BASE_BATCH} and scaled by global batch / {LR_BASE_BATCH}; a given `--lr` is "
        "used as is. |",
        f"| `--warmup-epochs` | Linear warm-up, {WARMUP_RULE}. |",
        "| `--config FILE.toml` | Option values from a file; the command line wins. |",
    ]
    for f in dataclasses.fields(RunOptions):
        info = option_info(f)
        assert info is not None
        lines.append(f"| `{flag_of(f, info)}` | {info.help} |")
    return "\n".join(lines) + "\n"
