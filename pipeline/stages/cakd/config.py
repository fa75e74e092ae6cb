"""``train-cakd``'s configuration: the options, the resolved run.

Torch-free, so the command line builds its options without loading torch.

Recipes (``--recipe``, :data:`..train.recipes.CAKD_RECIPES`, in the one recipe format every
trainer shares) fill every optimization setting the command line leaves out; what the user
gives always wins, and ``RUN_DIR/config.json`` records each value with its source (the
``{"value": ..., "from": ...}`` form ``train-student`` writes for its recipes).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

from ...augment.config import MIN_IMAGE_SIZE
from ...models.names import check_architecture
from ...models.teacher_spec import TeacherSpec
from ...runtime.config_file import Origin, given_in
from ...runtime.errors import UserError
from ...runtime.options import MAX_WORKERS, check_choices, check_numbers, option
from ...train.choices import OPTIMIZERS
from ...train.recipes import CAKD_RECIPE_NAMES, CAKD_RECIPES, CakdRecipeName, recipe_help
from ...train.run_options import (
    BATCH_SIZE_HELP,
    LR_BASE_BATCH,
    WARMUP_RULE,
    RunOptions,
    scaled_lr,
)
from ...train.temperature import MIN_TAU

Method = Literal["cakd", "logit", "none"]
"""``cakd``: L_proj1 + L_proj2 + λ·L_MVG + CE; ``logit``: Hinton KD; ``none``: CE only."""
METHODS: tuple[Method, ...] = get_args(Method)

ProjectorSet = Literal["both", "pca", "gl"]
"""Which projectors ``cakd`` trains (the paper's Fig. 3a ablation): ``both`` = PCA + GL."""
PROJECTOR_SETS: tuple[ProjectorSet, ...] = get_args(ProjectorSet)


@dataclass(kw_only=True)
class CakdTrainConfig(RunOptions):
    """Everything ``civt-pipe train-cakd`` needs; serialized to ``RUN_DIR/config.json``.

    ``resume="may-change"`` marks what ``--resume`` may change without changing the weights;
    the data and teacher may be respelled (the run identity pins their fingerprint and digest).
    """

    teacher: str = option(
        help="The ViT teacher, run live: NAME=ARCH:CHECKPOINT (e.g. vit=vit-nano:vit.pt).",
        resume="may-change",
    )
    model: str = option("resnet18", help="The CNN student (see `models`).")
    method: Method = option(
        "cakd",
        help="cakd: PCA + GL projectors + multi-view adversary + CE; logit: Hinton KD "
        "(CE + τ²·KL); none: CE only.",
        choices=METHODS,
    )
    multi_view: bool = option(
        True, help="cakd: multi-view generator and discriminator (off: projectors + CE only)."
    )
    block: int = option(-1, help="cakd: the teacher block whose features are distilled.")
    projectors: ProjectorSet = option(
        "both",
        help="cakd: both (L_proj1 + L_proj2), pca (L_proj1 only) or gl (L_proj2 only): the "
        "paper's Fig. 3a ablation. pca has no projected tokens for the discriminator: pair it "
        "with --no-multi-view.",
        choices=PROJECTOR_SETS,
    )
    student_layer: str | None = option(
        None,
        help="cakd: the student module whose map is h_S [default: the shallowest map on the "
        "teacher's patch grid, e.g. ResNet layer3 at 224 px for a 16-px-patch ViT; else the last "
        "map before pooling, resized]. See docs/method.md.",
    )
    gl_group: int = option(
        4, help="cakd: the GL projector's tile side (one FC layer per tile).", minimum=1
    )
    gl_dropout: float = option(
        0.1, help="cakd: dropout on the GL projector's input.", minimum=0, maximum=1
    )
    disc_widths: tuple[int, ...] = option(
        (256, 128),
        help="cakd: the discriminator's two hidden widths, the flag given twice.",
        flag="--disc-width",
        minimum=1,
    )
    lambda_mvg: float = option(1.0, help="cakd: λ, the weight of L_MVG.", minimum=0)
    feature_norm: bool = option(
        True,
        help="cakd: standardize the teacher's tokens h_T and values V_T per token (a layer norm "
        "without affine) before the projector losses; off: the raw activations (see docs/cakd.md).",
    )
    replace_p: float = option(
        0.5,
        help="cakd: probability that g(·) replaces an element of Q_S/K_S/V_S by the teacher's.",
        minimum=0,
        maximum=1,
    )
    view_p: float = option(
        0.5,
        help="cakd: probability that a student input is a transformed view.",
        minimum=0,
        maximum=1,
    )
    disc_lr: float = option(
        1e-4, help="cakd: Adam learning rate of the discriminator (constant).", minimum=0
    )
    view_jitter: float = option(
        0.4,
        help="cakd views: colour jitter strength (factors in 1 ± it).",
        minimum=0,
        maximum=1,
    )
    view_crop: float = option(
        0.5, help="cakd views: random crop's smallest area fraction.", minimum=0, maximum=1
    )
    view_rotation: float = option(
        15.0, help="cakd views: rotation range, ± degrees.", minimum=0, maximum=180
    )
    view_mask_ratio: float = option(
        0.25,
        help="cakd views: fraction of the teacher's patches masked (the patch is the "
        "teacher's patch size).",
        minimum=0,
        maximum=1,
    )
    view_noise: float = option(
        0.1, help="cakd views: Gaussian noise std on [0, 1] images.", minimum=0
    )
    tau: float = option(4.0, help="logit: distillation temperature τ.", minimum=MIN_TAU)
    alpha: float = option(
        0.9, help="logit: weight of τ²·KL; CE gets 1 - alpha.", minimum=0, maximum=1
    )
    recipe: CakdRecipeName = option(
        "small",
        help="Where the optimization defaults come from: small (digits on a CPU), paper-cifar "
        "or paper-imagenet (Liu et al.). Options given override it.",
        choices=CAKD_RECIPE_NAMES,
    )
    epochs: int | None = option(
        None, help="Epochs " + recipe_help("epochs", CAKD_RECIPES), minimum=1
    )
    batch_size: int | None = option(
        None, help=BATCH_SIZE_HELP[:-1] + " " + recipe_help("batch_size", CAKD_RECIPES), minimum=1
    )
    optimizer: str | None = option(
        None, help="sgd or adamw " + recipe_help("optimizer", CAKD_RECIPES), choices=OPTIMIZERS
    )
    lr: float | None = option(
        None,
        help="Peak learning rate " + recipe_help("lr", CAKD_RECIPES),
        minimum=0,
    )
    weight_decay: float | None = option(
        None, help="Weight decay " + recipe_help("weight_decay", CAKD_RECIPES), minimum=0
    )
    warmup_epochs: float | None = option(
        None,
        help=f"Linear warm-up, {WARMUP_RULE} " + recipe_help("warmup_epochs", CAKD_RECIPES),
        minimum=0,
    )
    milestones: tuple[int, ...] | None = option(
        None,
        help="Epoch at which the lr drops ×0.1, repeatable (0 alone: cosine) "
        + recipe_help("milestones", CAKD_RECIPES),
        flag="--milestone",
        minimum=0,
    )
    label_smoothing: float = option(0.0, help="Label smoothing of the CE.", minimum=0)
    image_size: int | None = option(
        None, help="Input side of both models [default: the teacher's].", minimum=MIN_IMAGE_SIZE
    )
    min_scale: float | None = option(
        None, help="Smallest crop area (default 0.08; 0.35 at ≤ 64 px).", maximum=1
    )
    hflip: float | None = option(
        None, help="Flip probability (default 0.5; 0 under 16 px native).", minimum=0, maximum=1
    )
    seed: int = option(0, help="Seed of weights, augmentation, views and order.", minimum=0)
    shuffle_buffer: int = option(
        1024, help="Samples held for shuffling per rank.", flag="", minimum=1
    )
    workers: int = option(
        0,
        help="Data-loading processes per rank (0: none).",
        minimum=0,
        maximum=MAX_WORKERS,
        resume="may-change",
    )
    log_every: int = option(
        10, help="Write a step record every N steps.", flag="", minimum=1, resume="may-change"
    )
    progress: bool = option(True, help="Draw progress bars.", flag="", resume="may-change")
    sources: dict[str, Origin] = option(
        help="Where each option's value came from (filled by the command line).",
        flag="",
        default_factory=dict,
        resume="may-change",
    )

    def __post_init__(self) -> None:
        self.check_run_options()
        if self.milestones is not None:
            self.milestones = tuple(int(m) for m in self.milestones)
        check_numbers(self)
        check_choices(self)
        for flag, value in (("--lr", self.lr), ("--disc-lr", self.disc_lr)):
            if value is not None and not value > 0:
                raise UserError(f"{flag} must be positive, got {value}")
        if not self.label_smoothing < 1:
            raise UserError(f"--label-smoothing must lie in [0, 1), got {self.label_smoothing}")
        if self.min_scale is not None and not 0 < self.min_scale <= 1:
            raise UserError(f"--min-scale must lie in (0, 1], got {self.min_scale}")
        if self.milestones is not None and any(m < 0 for m in self.milestones):
            raise UserError(f"--milestone must be at least 0, got {list(self.milestones)}")
        if not self.seed < 2**63:
            raise UserError(f"--seed must lie in [0, 2**63), got {self.seed}")
        self.disc_widths = tuple(int(w) for w in self.disc_widths)
        if len(self.disc_widths) != 2 or min(self.disc_widths) < 1:
            raise UserError(
                "--disc-width: the discriminator has two hidden layers; give the flag twice "
                "with positive widths, "
                f"got {list(self.disc_widths)}"
            )
        if self.method == "cakd" and self.projectors == "pca" and self.multi_view:
            raise UserError(
                "--projectors pca leaves no projected tokens h'_S for the multi-view "
                "discriminator; add --no-multi-view"
            )
        for flag, value in (
            ("--view-crop", self.view_crop),
            ("--view-mask-ratio", self.view_mask_ratio),
        ):
            if not value > 0:
                raise UserError(f"{flag} must lie in (0, 1], got {value}")

    def preflight(self) -> None:
        """The refusals that need no data, torch-free (run by the command line before it
        imports the stage)."""
        super().preflight()
        check_architecture(self.model)
        TeacherSpec.parse(self.teacher).preflight()

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict (stored in ``config.json`` and every checkpoint)."""
        out = asdict(self)
        out["milestones"] = list(self.milestones) if self.milestones is not None else None
        out["disc_widths"] = list(self.disc_widths)
        return out


@dataclass(frozen=True, kw_only=True, slots=True)
class ResolvedOptimization:
    """The optimization settings of a run with the recipe's defaults filled in."""

    optimizer: str
    lr: float
    weight_decay: float
    epochs: int
    batch_size: int
    warmup_epochs: float
    milestones: tuple[int, ...]
    """Epochs of the ×0.1 drops; empty: cosine."""
    nesterov: bool
    provenance: dict[str, Any]
    """``{"recipe": name, field: {"value": v, "from": source}}`` for ``config.json``."""

    def to_dict(self) -> dict[str, Any]:
        """The settings without provenance (what a resumed run must derive again)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del out["provenance"]
        out["milestones"] = list(self.milestones)
        return out


def resolve_optimization(cfg: CakdTrainConfig, world_size: int = 1) -> ResolvedOptimization:
    """Fill what ``cfg`` leaves ``None`` from its recipe, recording where each value came from.

    A recipe's rate scales with the global batch (``batch_size × world_size``); a given
    ``--lr`` is used as is. ``--milestone 0`` alone asks for the cosine decay (no milestones).
    """
    recipe = CAKD_RECIPES[cfg.recipe]
    tag = f"recipe {cfg.recipe} ({recipe.source})"
    provenance: dict[str, Any] = {"recipe": cfg.recipe}
    values: dict[str, Any] = {}
    for name in ("optimizer", "lr", "weight_decay", "epochs", "batch_size", "warmup_epochs"):
        given = getattr(cfg, name)
        values[name] = given if given is not None else getattr(recipe, name)
        source = (
            f"--{name.replace('_', '-')} ({given_in(cfg.sources, name)})"
            if given is not None
            else tag
        )
        provenance[name] = {"value": values[name], "from": source}
    if cfg.lr is None:
        global_batch = int(values["batch_size"]) * world_size
        values["lr"] = scaled_lr(recipe.lr, global_batch)
        provenance["lr"] = {
            "value": values["lr"],
            "from": f"{tag}: {recipe.lr:g} × {global_batch}/{LR_BASE_BATCH}",
        }
    if cfg.milestones is not None:
        milestones = tuple(m for m in cfg.milestones if m != 0)
        origin = given_in(cfg.sources, "milestones")
        provenance["milestones"] = {"value": list(milestones), "from": f"--milestone ({origin})"}
    else:
        milestones = recipe.milestones
        provenance["milestones"] = {"value": list(milestones), "from": tag}
    epochs = int(values["epochs"])
    if any(m > epochs for m in milestones):
        raise UserError(f"--milestone {max(milestones)} lies past the run's {epochs} epochs")
    if milestones and values["warmup_epochs"] >= min(milestones):
        raise UserError(
            f"the warm-up ({values['warmup_epochs']:g} epochs) must end before the first "
            f"milestone (epoch {min(milestones)})"
        )
    # Nesterov only when the recipe asks for it and the optimizer is its own.
    nesterov = recipe.nesterov and values["optimizer"] == recipe.optimizer
    provenance["nesterov"] = {"value": nesterov, "from": tag}
    return ResolvedOptimization(
        optimizer=str(values["optimizer"]),
        lr=float(values["lr"]),
        weight_decay=float(values["weight_decay"]),
        epochs=epochs,
        batch_size=int(values["batch_size"]),
        warmup_epochs=float(values["warmup_epochs"]),
        milestones=tuple(sorted(set(milestones))),
        nesterov=nesterov,
        provenance=provenance,
    )
