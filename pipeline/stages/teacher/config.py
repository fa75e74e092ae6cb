"""``train-teacher``'s configuration: recipes per family, the options, the resolved run.

Torch-free, so the command line builds its options without loading torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...augment.config import MIN_IMAGE_SIZE, crop_flip_defaults
from ...models.checkpoint_file import checkpoint_file
from ...models.names import check_architecture
from ...runtime.config_file import Origin
from ...runtime.errors import UserError
from ...runtime.options import MAX_WORKERS, check_choices, check_numbers, option
from ...train.choices import OPTIMIZERS
from ...train.recipes import TEACHER_RECIPES
from ...train.run_options import (
    BATCH_SIZE_HELP,
    LR_BASE_BATCH,
    WARMUP_RULE,
    RunOptions,
    scaled_lr,
)

# ----------------------------------------------------------------------------------- recipes


def recipe_family(arch: str) -> str:
    """Which :data:`..train.recipes.TEACHER_RECIPES` entry an architecture uses (a timm model:
    by its family)."""
    if arch.startswith("timm:"):
        from ...models.zoo_timm import family as timm_family

        return "vit" if timm_family(arch) == "transformer" else "resnet"
    if arch.startswith(("vit-", "deit-")):
        return "vit-nano" if arch.endswith("-nano") else "vit"
    if arch.endswith("-nano"):
        return "nano"
    for family in ("rednet", "regnet", "resnet"):
        if arch.startswith(family):
            return family
    return "resnet"


# ------------------------------------------------------------------------------------ config


@dataclass(kw_only=True, slots=True)
class TeacherTrainConfig(RunOptions):
    """What ``civt-pipe train-teacher`` runs. ``None`` fields take the architecture's recipe.

    The resume rule reads :class:`ResolvedTeacherConfig` (every default filled in), not this.
    """

    arch: str = option(help="Teacher architecture (see `models`).")
    epochs: int | None = option(None, help="Epochs (default: the arch's recipe).", minimum=1)
    batch_size: int | None = option(
        None, help=BATCH_SIZE_HELP[:-1] + " (default: recipe).", minimum=1
    )
    lr: float | None = option(
        None,
        help=f"Peak learning rate (default: recipe rate × global batch / {LR_BASE_BATCH}).",
        minimum=0,
    )
    optimizer: str | None = option(None, help="sgd or adamw (default: recipe).", choices=OPTIMIZERS)
    weight_decay: float | None = option(None, help="Weight decay (default: recipe).", minimum=0)
    warmup_epochs: float | None = option(
        None, help=f"Linear warm-up, {WARMUP_RULE} (default: recipe).", minimum=0
    )
    label_smoothing: float = option(0.1, help="Label smoothing of the loss.", minimum=0)
    image_size: int | None = option(
        None, help="Input side (default: 16 / native ≤ 64 px / 224).", minimum=MIN_IMAGE_SIZE
    )
    min_scale: float | None = option(
        None, help="Smallest crop area (default 0.08; 0.35 at ≤ 64 px).", maximum=1
    )
    hflip: float | None = option(
        None, help="Flip probability (default 0.5; 0 under 16 px).", minimum=0, maximum=1
    )
    seed: int = option(0, help="Seed of weights, augmentation, order.", minimum=0)
    workers: int = option(
        1, help="Data-loading processes per rank (0: none).", minimum=0, maximum=MAX_WORKERS
    )
    shuffle_buffer: int = option(
        1024, help="Samples held for shuffling per rank (1: shard order).", minimum=1
    )
    init: Path | None = option(None, help="Start from a torchvision weight file or our checkpoint.")
    sources: dict[str, Origin] = option(
        help="Where each option's value came from (filled by the command line).",
        flag="",
        default_factory=dict,
    )

    def __post_init__(self) -> None:
        self.out = str(self.out)
        if self.init is not None:
            self.init = Path(self.init)
        check_numbers(self)
        check_choices(self)
        self.check_run_options()
        if self.lr is not None and not self.lr > 0:
            raise UserError(f"--lr must be positive, got {self.lr}")
        if not self.label_smoothing < 1:
            raise UserError(f"--label-smoothing must lie in [0, 1), got {self.label_smoothing}")
        if self.min_scale is not None and not 0 < self.min_scale <= 1:
            raise UserError(f"--min-scale must lie in (0, 1], got {self.min_scale}")
        if not self.seed < 2**63:
            raise UserError(f"--seed must lie in [0, 2**63), got {self.seed}")

    def preflight(self) -> None:
        """The refusals that need no data, torch-free: the command line runs them before it
        imports the stage (:func:`~civt_pipe.cli.options.config_command`)."""
        # Not super(): the slots dataclass is a new class, which zero-argument super() misses.
        RunOptions.preflight(self)
        check_architecture(self.arch, "teacher")
        if self.init is not None:
            checkpoint_file(self.init)


@dataclass(frozen=True, kw_only=True, slots=True)
class ResolvedTeacherConfig:
    """Every setting of a teacher run with the recipe's defaults filled in.

    Written to ``RUN_DIR/config.json`` and into the checkpoints; ``--resume`` checks it with
    the one resume rule (:func:`..runtime.options.resume_mismatch`): only the fields marked
    ``may-change`` below may differ from the saved run.
    """

    arch: str = option(help="Teacher architecture.", flag="")
    recipe: str = option(help="The recipe family whose defaults filled the gaps.", flag="")
    data: str = option(
        help="Training shards (another path to the same shards is fine: the data fingerprint "
        "must match).",
        flag="",
        resume="may-change",
    )
    val: str | None = option(
        None, help="Validation shards (do not change the weights).", flag="", resume="may-change"
    )
    out: str = option(help="The run directory.", flag="", resume="may-change")
    epochs: int = option(help="Epochs.", flag="")
    batch_size: int = option(help="Batch size per rank.", flag="")
    optimizer: str = option(help="Optimizer.", flag="", choices=OPTIMIZERS)
    lr: float = option(help="Peak learning rate.", flag="")
    min_lr: float = option(0.0, help="Floor of the cosine.", flag="")
    weight_decay: float = option(help="Weight decay.", flag="")
    warmup_epochs: float = option(help="Linear warm-up in epochs.", flag="")
    label_smoothing: float = option(help="Label smoothing of the loss.", flag="")
    image_size: int = option(help="Input side.", flag="")
    min_scale: float = option(help="Smallest crop area.", flag="")
    hflip: float = option(help="Flip probability.", flag="")
    seed: int = option(help="Seed of weights, augmentation, order.", flag="")
    workers: int = option(help="Data-loading processes per rank.", flag="")
    shuffle_buffer: int = option(help="Samples held for shuffling per rank.", flag="")
    world_size: int = option(help="Ranks under torchrun.", flag="")
    # Resolved for the device (never "auto"); runs saved before the option trained in fp32.
    precision: str = option(
        "fp32", help="Forward precision (changes the numerics: must match).", flag=""
    )
    compile: bool = option(
        False, help="torch.compile of the steps (same computation).", flag="", resume="may-change"
    )
    save_every: int = option(
        0, help="Steps between mid-epoch checkpoints.", flag="", resume="may-change"
    )
    init: str | None = option(
        None,
        help="Initial weights (irrelevant on resume: the weights come from out).",
        flag="",
        resume="may-change",
    )
    sources: dict[str, Origin] = option(
        help="Where each option's value came from: default, config-file or command-line "
        "(a resumed run may take its values from anywhere).",
        flag="",
        resume="may-change",
        default_factory=dict,
    )

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict (the same keys older versions wrote, so their runs resume)."""
        return dataclasses.asdict(self)


def resolve_config(
    cfg: TeacherTrainConfig, index: Any, world_size: int, precision: str = "fp32"
) -> ResolvedTeacherConfig:
    """Every setting of the run with the recipe's defaults filled in (``precision``: the one
    ``cfg.precision`` resolves to on the run's device)."""
    from ...data.streams import default_image_size
    from ...models.factory import get_preset

    get_preset(cfg.arch, kind="teacher")
    family = recipe_family(cfg.arch)
    recipe = TEACHER_RECIPES[family]
    assert recipe.epochs is not None and recipe.batch_size is not None
    batch = cfg.batch_size or recipe.batch_size  # per rank
    image_size = cfg.image_size or default_image_size(index)
    native = max(index.image_size) if index.image_size is not None else image_size
    min_scale, hflip = crop_flip_defaults(image_size, native)
    return ResolvedTeacherConfig(
        arch=cfg.arch,
        recipe=family,
        data=cfg.data,
        val=cfg.val,
        out=str(cfg.out),
        save_every=cfg.save_every,
        epochs=cfg.epochs or recipe.epochs,
        batch_size=batch,
        optimizer=cfg.optimizer or recipe.optimizer,
        lr=cfg.lr if cfg.lr is not None else scaled_lr(recipe.lr, batch * world_size),
        min_lr=recipe.min_lr,
        weight_decay=cfg.weight_decay if cfg.weight_decay is not None else recipe.weight_decay,
        warmup_epochs=(
            cfg.warmup_epochs if cfg.warmup_epochs is not None else recipe.warmup_epochs
        ),
        label_smoothing=cfg.label_smoothing,
        image_size=image_size,
        min_scale=cfg.min_scale if cfg.min_scale is not None else min_scale,
        hflip=cfg.hflip if cfg.hflip is not None else hflip,
        seed=cfg.seed,
        workers=cfg.workers,
        shuffle_buffer=cfg.shuffle_buffer,
        world_size=world_size,
        precision=precision,
        compile=cfg.compile,
        init=str(cfg.init) if cfg.init is not None else None,
        sources=dict(cfg.sources),
    )
