"""``train-student``'s configuration (torch-free, so the command line builds its options fast)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

from ...augment.config import PRESET_CHOICES, RENDER_DEVICE_CHOICES, RENDER_DEVICE_HELP
from ...data.imageio import DECODER_CHOICES, DECODER_HELP
from ...models.token_mode import ALIGN_ROLES, TOKEN_MODES, TokenMode
from ...replay.modes import VERIFY_MODES
from ...runtime.config_file import Origin
from ...runtime.errors import UserError
from ...runtime.options import (
    MAX_WORKERS,
    check_choices,
    check_numbers,
    option,
)
from ...train.recipes import RECIPES, RecipeName, recipe_help
from ...train.run_options import BATCH_SIZE_HELP, WARMUP_RULE, RunOptions

DistillKind = Literal["soft", "hard"]
"""``soft``: τ²·KL to the teacher's distribution (paper Eq. 5); ``hard``: cross-entropy to the
teacher's arg-max (DeiT's hard distillation)."""

DISTILL_KINDS: tuple[DistillKind, ...] = get_args(DistillKind)


def split_named(values: Sequence[str], option: str) -> list[tuple[str | None, str]]:
    """Split repeated ``VALUE`` / ``NAME=VALUE`` options into ``(name or None, value)`` pairs.

    The one place per-teacher options are split (``--tau``, ``--lambda``, ``--distill``,
    ``--align``); an empty name before ``=`` is an error.
    """
    pairs: list[tuple[str | None, str]] = []
    for text in values:
        name, sep, value = text.rpartition("=")
        if sep and not name:
            raise UserError(f"{option} {text!r} has an empty teacher name")
        pairs.append((name if sep else None, value))
    return pairs


def parse_per_teacher(values: Sequence[str], option: str) -> tuple[float, dict[str, float]]:
    """Parse ``--tau 2`` / ``--tau cnn=2 --tau inn=4`` into (default, per-teacher overrides)."""
    default = 1.0
    named: dict[str, float] = {}
    for name, number in split_named(values, option):
        text = number if name is None else f"{name}={number}"
        try:
            value = float(number)
        except ValueError:
            raise UserError(f"{option} {text!r} is not a number or NAME=NUMBER") from None
        if not math.isfinite(value):
            raise UserError(f"{option} {text!r} is not a finite number")
        if name is None:
            default = value
        else:
            named[name] = value
    return default, named


def parse_distill(values: Sequence[str]) -> tuple[DistillKind, dict[str, DistillKind]]:
    """Parse ``--distill hard`` / ``--distill cnn=hard`` into (default, per-teacher kinds)."""
    default: DistillKind = "soft"
    named: dict[str, DistillKind] = {}
    for name, kind in split_named(values, "--distill"):
        if kind not in DISTILL_KINDS:
            text = kind if name is None else f"{name}={kind}"
            raise UserError(f"--distill {text!r} must be soft, hard, NAME=soft or NAME=hard")
        chosen: DistillKind = "hard" if kind == "hard" else "soft"
        if name is None:
            default = chosen
        else:
            named[name] = chosen
    return default, named


def parse_align(values: Sequence[str]) -> dict[str, str]:
    """Parse repeated ``--align NAME=conv|inv`` into ``{teacher: role}``."""
    roles: dict[str, str] = {}
    for name, role in split_named(values, "--align"):
        text = role if name is None else f"{name}={role}"
        if name is None:
            raise UserError(f"--align {text!r} must be NAME=conv or NAME=inv")
        if role not in ALIGN_ROLES:
            raise UserError(f"--align {text!r}: the role must be conv or inv, not {role!r}")
        roles[name] = role
    return roles


@dataclass(kw_only=True)
class StudentTrainConfig(RunOptions):
    """Everything ``train-student`` needs; serialized to ``RUN_DIR/config.json`` and checkpoints.

    ``resume="may-change"`` marks what a ``--resume`` may change without changing the weights:
    output paths, cadence and machinery. The data, store and teachers may be respelled (another
    path to the same files); the run identity pins their fingerprints and digests instead.
    """

    model: str = option("civt-nano", help="Student preset (civt-nano, civt-ti...).")
    store: str | None = option(
        None, help="Logit store dumped from the same shards.", resume="may-change"
    )
    teachers: tuple[str, ...] = option(
        (),
        help="Online mode (no --store): NAME=ARCH:CHECKPOINT.",
        flag="--teacher",
        resume="may-change",
    )
    epochs: int = option(10, help="Epochs; epoch e uses view e mod V.", minimum=1)
    batch_size: int = option(64, help=BATCH_SIZE_HELP, minimum=1)
    recipe: RecipeName = option(
        "small",
        help="Where the defaults of the options below come from: small (tuned for small data "
        "on a CPU), coadvise or deit (the published ImageNet recipes). Options given on the "
        "command line override it; config.json records every value and its source.",
        choices=RECIPES,
    )
    lr: float | None = option(None, help="Peak learning rate " + recipe_help("lr"), minimum=0)
    min_lr: float | None = option(
        None, help="Floor of the cosine, capped at lr " + recipe_help("min_lr"), minimum=0
    )
    weight_decay: float | None = option(
        None, help="AdamW weight decay " + recipe_help("weight_decay"), minimum=0
    )
    warmup_epochs: float | None = option(
        None,
        help=f"Linear warm-up, {WARMUP_RULE} " + recipe_help("warmup_epochs"),
        minimum=0,
    )
    clip_grad: float | None = option(
        None, help="Clip the gradient norm at this (0: off) " + recipe_help("clip_grad"), minimum=0
    )
    drop_path: float | None = option(
        None,
        help="Stochastic depth of the student's last block " + recipe_help("drop_path"),
        minimum=0,
    )
    # The command line spells τ and λ as repeatable --tau/--lambda (T or NAME=T), split into a
    # default and per-teacher overrides by parse_per_teacher.
    tau: float = option(1.0, help="Default distillation temperature τt.", flag="")
    taus: dict[str, float] = option(help="Per-teacher τt overrides.", flag="", default_factory=dict)
    lambda_kd: float = option(1.0, help="Default λt, the weight of each teacher's KL.", flag="")
    lambdas: dict[str, float] = option(
        help="Per-teacher λt overrides.", flag="", default_factory=dict
    )
    lambda_cls: float = option(1.0, help="Class-token cross-entropy weight.", minimum=0)
    label_smoothing: float | None = option(
        None,
        help="Label smoothing of the class-token CE " + recipe_help("label_smoothing"),
        minimum=0,
    )
    # The command line spells these as repeatable --distill KIND / NAME=KIND (parse_distill).
    distill: DistillKind = option("soft", help="Default distillation kind.", flag="")
    distills: dict[str, DistillKind] = option(
        help="Per-teacher distillation kinds.", flag="", default_factory=dict
    )
    distill_smoothing: float = option(
        0.0, help="Label smoothing of a hard teacher's cross-entropy (as DeiT offers).", minimum=0
    )
    token_mode: TokenMode = option(
        "per-teacher",
        help="per-teacher: a learned token per teacher; aligned: conv/inv stem tokens (two "
        "teachers); shared: one token for all; cls: the class token fits labels and teachers "
        "(paper Table 6 '1 token'); none: labels only.",
        choices=TOKEN_MODES,
    )
    # --align NAME=conv|inv, repeatable (parse_align); the rest comes from the teachers' archs.
    align: dict[str, str] = option(
        help="Aligned mode: teacher roles (conv or inv).", flag="", default_factory=dict
    )
    patch_size: int | None = option(None, help="Patch size [default: preset's].", minimum=1)
    # auto replays a store with the decoder it records; another one is refused (bind_store).
    decoder: str = option("auto", help=DECODER_HELP, choices=DECODER_CHOICES)
    # auto replays a store on the device type it records; another one is refused (bind_store).
    render_device: str = option("auto", help=RENDER_DEVICE_HELP, choices=RENDER_DEVICE_CHOICES)
    verify_replay: str = option(
        "sample",
        help="Check replayed views against stored digests: all, sample (first block of each "
        "shard), off.",
        choices=VERIFY_MODES,
        resume="may-change",
    )
    # Subsets of one store, for the views study and the teacher-set ablation without a dump
    # per setting; the upper ends (the store's V, k and teachers) are checked once it is open.
    store_views: int | None = option(
        None,
        help="Store mode: replay only the store's first N views (epoch e uses view e mod N) "
        "[default: all].",
        minimum=1,
    )
    store_topk: int | None = option(
        None,
        help="Store mode: use only the first K of the stored top-k logits of every view and "
        "teacher [default: all].",
        minimum=1,
    )
    store_teachers: tuple[str, ...] = option(
        (),
        help="Store mode: distil from this teacher of the store only (repeatable) [default: all].",
        flag="--store-teacher",
    )
    views: int = option(1, help="Online mode: distinct views V.", minimum=1)
    aug: str = option(
        "auto",
        help="Online mode: augmentation preset (auto: small up to 32 px, else deit).",
        choices=PRESET_CHOICES,
    )
    image_size: int | None = option(
        None, help="Online mode: view size [default: the teachers'].", minimum=1
    )
    seed: int | None = option(
        None,
        help="Seed of the augmentation, the student's initialization and the data order "
        "[store mode: the store's; online mode: 0].",
        minimum=0,
    )
    shuffle_buffer: int = option(512, help="Samples in the shuffle buffer.", flag="", minimum=1)
    workers: int = option(
        0,
        help="DataLoader processes (0: none).",
        minimum=0,
        maximum=MAX_WORKERS,
        resume="may-change",
    )
    # Every step record syncs the losses to the host; 10 keeps the device busy between them.
    log_every: int = option(
        10,
        help="Write a step record to metrics.jsonl every N steps.",
        flag="",
        minimum=1,
        resume="may-change",
    )
    progress: bool = option(True, help="Draw progress bars.", flag="", resume="may-change")
    # Filled by the command line (--config); a resumed run may take its values from anywhere.
    sources: dict[str, Origin] = option(
        help="Where each option's value came from: default, config-file or command-line.",
        flag="",
        resume="may-change",
        default_factory=dict,
    )

    def __post_init__(self) -> None:
        check_numbers(self)
        check_choices(self)
        self.check_run_options()
        if self.store is not None and self.teachers:
            raise UserError("give either --store (stored logits) or --teacher (online), not both")
        if self.lr is not None and not self.lr > 0:
            raise UserError(f"--lr must be positive, got {self.lr}")
        tau_values = [("--tau", self.tau), *[(f"--tau {k}", v) for k, v in self.taus.items()]]
        for name, value in tau_values:
            if not value > 0:
                raise UserError(f"{name} must be positive, got {value}")
        for name, value in [
            ("--lambda", self.lambda_kd),
            *[(f"--lambda {k}", v) for k, v in self.lambdas.items()],
        ]:
            if value < 0:
                raise UserError(f"{name} must be 0 or more, got {value}")
        for flag, fraction in (
            ("--label-smoothing", self.label_smoothing),
            ("--distill-smoothing", self.distill_smoothing),
            ("--drop-path", self.drop_path),
        ):
            if fraction is not None and not fraction < 1:
                raise UserError(f"{flag} must be in [0, 1), got {fraction}")
        for name, kind in [("", self.distill), *self.distills.items()]:
            if kind not in DISTILL_KINDS:
                where = f"{name}=" if name else ""
                raise UserError(f"--distill {where}{kind} must be soft or hard")
        for name, role in self.align.items():
            if role not in ALIGN_ROLES:
                raise UserError(f"--align {name}={role}: the role must be conv or inv")
        if self.align and self.token_mode != "aligned":
            raise UserError(
                f"--align only applies to --token-mode aligned (the token mode is "
                f"{self.token_mode})"
            )
        if self.seed is not None and not self.seed < 2**63:
            raise UserError(f"--seed must be in [0, 2**63), got {self.seed}")
        if self.store is None:
            for flag, given in (
                ("--store-views", self.store_views is not None),
                ("--store-topk", self.store_topk is not None),
                ("--store-teacher", bool(self.store_teachers)),
            ):
                if given:
                    raise UserError(f"{flag} needs --store")
        twice = sorted({n for n in self.store_teachers if self.store_teachers.count(n) > 1})
        if twice:
            raise UserError(f"--store-teacher {twice[0]!r} is given twice")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["teachers"] = list(self.teachers)
        out["store_teachers"] = list(self.store_teachers)
        return out
