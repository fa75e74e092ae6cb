"""Every trainer's recipes, in one table format: where each optimization default comes from.

A recipe fills the hyper-parameters the user did not give on the command line; a value the user
gives always wins, and ``config.json`` records each value with its source
(``{"lr": {"value": ..., "from": ...}}``). Every recipe states its learning rate for a global
batch of 512 (:data:`..train.run_options.LR_BASE_BATCH`); the run scales it with its global
batch (batch per rank × ranks). The three tables share the one :class:`Recipe` type;
``docs/commands.md``'s "Recipes" section is generated from them (:func:`recipes_markdown`).

``train-student`` (``--recipe``, :data:`STUDENT_RECIPES`):

- ``small`` (the default): civt-pipe's settings for small data trained on a CPU in minutes
  (the behaviour pins and the quickstart are measured with it);
- ``coadvise``: the official Co-advise code (OliverRensu/co-advise, ``config.py`` read by
  ``main.py``): AdamW, lr 5e-4, min lr 5e-6, both × global batch / 512, 20 warm-up epochs, weight
  decay 0.05, label smoothing 0.1, gradient norm clipped at 15 (``CLIP_GRAD = 5.0*3``). Its
  ``main.py`` builds the student without ``drop_path_rate``, so timm's default 0 applies (the
  ``DROP_PATH_RATE = 0.1`` of its ``config.py`` is never passed to the model);
- ``deit``: DeiT's ``main.py`` (facebookresearch/deit): AdamW, lr 5e-4 × global batch / 512,
  min lr 1e-5 (not scaled), 5 warm-up epochs, weight decay 0.05, label smoothing 0.1, no gradient
  clipping (``--clip-grad`` defaults to None), drop path 0.1 for every model size.

  What is not reproduced, on purpose: the epoch count (give ``--epochs``; the papers train 300),
  the warm-up's start value (ours rises linearly from ``lr / W``, theirs from a ``warmup_lr``),
  DeiT's 10 cool-down epochs and weight EMA. Every trainer clamps warm-up to a fifth of the
  run, so a 20-epoch warm-up still leaves a short run time to decay.

``train-teacher`` (by architecture family, :data:`TEACHER_RECIPES`): ImageNet-scale recipes
follow the usual practice (Goyal et al.: SGD, Nesterov, 0.1 per 256 images = 0.2 per 512; the
RedNet paper and torchvision's references for the decay). The nano presets are tuned to reach
>= 95 % on the built-in digits in a couple of CPU minutes (4e-3 at batch 64): AdamW converges in
far fewer steps than SGD there. ViT teachers (cross-architecture distillation): DeiT's AdamW
5e-4 per 512 images, batch 1024, 300 epochs; vit-nano at the rate civt-nano trains with on
digits (2e-3 at batch 64: 91 % on the 16 px digits in 30 epochs; the nano CNNs' 4e-3 stalled it
near 50 %).

``train-cakd`` (``--recipe``, :data:`CAKD_RECIPES`):

- ``small`` (the default): a CPU-scale recipe for tiny data (digits at 16 px) that trains a
  ``cnn-nano``-size student in minutes: AdamW, lr 4e-3 at batch 64 (3.2e-2 per 512), weight
  decay 0.05, 15 epochs of batch 64, one warm-up epoch, then cosine (measured against SGD on
  digits: see docs/cakd.md);
- ``paper-cifar`` / ``paper-imagenet``: Liu et al. (ACCV 2022), Sec. 4.1: SGD momentum 0.9
  (no Nesterov), weight decay 1e-4, lr 0.1 divided by 10 at the milestones; CIFAR 200 epochs of
  batch 64 (0.8 per 512) with milestones 100 and 150, ImageNet 120 epochs of batch 256 (0.2 per
  512) with milestones 60 and 90.

No torch here: the command line imports the recipe names and help texts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal, get_args

from ..runtime.config_file import given_in

RecipeName = Literal["small", "coadvise", "deit"]
"""A ``train-student`` recipe (see the module docstring)."""

RECIPES: tuple[RecipeName, ...] = get_args(RecipeName)
"""Every ``train-student`` recipe, the default first."""

CakdRecipeName = Literal["small", "paper-cifar", "paper-imagenet"]
"""A ``train-cakd`` recipe."""

CAKD_RECIPE_NAMES: tuple[CakdRecipeName, ...] = get_args(CakdRecipeName)
"""Every ``train-cakd`` recipe, the default first."""

HYPERPARAMETERS: tuple[str, ...] = (
    "lr",
    "min_lr",
    "warmup_epochs",
    "weight_decay",
    "label_smoothing",
    "clip_grad",
    "drop_path",
)
"""The ``train-student`` config fields a recipe fills (``None`` in the config: "from the
recipe")."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Recipe:
    """One recipe of any trainer. A ``None`` field is not part of the recipe: the trainer's own
    option default applies (``train-student``'s ``--epochs``, ``train-teacher``'s
    ``--label-smoothing``)."""

    source: str
    """Where the values come from (shown in ``config.json``)."""
    optimizer: Literal["sgd", "adamw"]
    lr: float
    """Peak learning rate at a global batch of 512, scaled linearly with the global batch."""
    weight_decay: float
    warmup_epochs: float
    """Linear warm-up (every trainer clamps it to a fifth of the run)."""
    epochs: int | None = None
    batch_size: int | None = None
    """Images per step and rank."""
    min_lr: float = 0.0
    """Floor of the cosine."""
    min_lr_scaled: bool = False
    """Whether ``min_lr`` scales with the global batch too (Co-advise: yes; DeiT: no)."""
    milestones: tuple[int, ...] = ()
    """Epochs at which the rate drops ×0.1; empty: cosine decay."""
    nesterov: bool = False
    """Nesterov momentum, when the run's optimizer is SGD."""
    label_smoothing: float | None = None
    clip_grad: float | None = None
    """Largest gradient norm; ``None``: no clipping."""
    drop_path: float | None = None
    """Stochastic depth of the student; ``None``: the preset's own default."""


STUDENT_RECIPES: dict[str, Recipe] = {
    "small": Recipe(
        source="civt-pipe's small-data defaults",
        optimizer="adamw",
        lr=1e-3,
        min_lr=1e-6,
        warmup_epochs=5.0,
        weight_decay=0.05,
        label_smoothing=0.0,
    ),
    "coadvise": Recipe(
        source="OliverRensu/co-advise config.py + main.py",
        optimizer="adamw",
        lr=5e-4,
        min_lr=5e-6,
        min_lr_scaled=True,
        warmup_epochs=20.0,
        weight_decay=0.05,
        label_smoothing=0.1,
        clip_grad=15.0,
        drop_path=0.0,
    ),
    "deit": Recipe(
        source="facebookresearch/deit main.py",
        optimizer="adamw",
        lr=5e-4,
        min_lr=1e-5,
        warmup_epochs=5.0,
        weight_decay=0.05,
        label_smoothing=0.1,
        drop_path=0.1,
    ),
}
"""``train-student``'s ``--recipe``."""

_IMAGENET_SGD = Recipe(
    source="Goyal et al. 2017 (SGD, Nesterov, 0.1 per 256 images)",
    optimizer="sgd",
    lr=0.2,
    weight_decay=1e-4,
    epochs=100,
    batch_size=256,
    warmup_epochs=5.0,
    nesterov=True,
)
"""The ImageNet-scale CNN recipe the resnet, rednet and regnet families share."""

TEACHER_RECIPES: dict[str, Recipe] = {
    "nano": Recipe(
        source="civt-pipe's digits recipe for the nano CNNs",
        optimizer="adamw",
        lr=3.2e-2,
        weight_decay=0.05,
        epochs=15,
        batch_size=64,
        warmup_epochs=1.0,
        nesterov=True,
    ),
    "resnet": _IMAGENET_SGD,
    "rednet": replace(_IMAGENET_SGD, source=_IMAGENET_SGD.source + "; RedNet paper"),
    "regnet": replace(
        _IMAGENET_SGD,
        source=_IMAGENET_SGD.source + "; torchvision references",
        weight_decay=5e-5,
    ),
    "vit": Recipe(
        source="facebookresearch/deit main.py",
        optimizer="adamw",
        lr=5e-4,
        weight_decay=0.05,
        epochs=300,
        batch_size=1024,
        warmup_epochs=5.0,
        nesterov=True,
    ),
    "vit-nano": Recipe(
        source="civt-pipe's digits recipe for vit-nano",
        optimizer="adamw",
        lr=1.6e-2,
        weight_decay=0.05,
        epochs=30,
        batch_size=64,
        warmup_epochs=2.0,
        nesterov=True,
    ),
}
"""``train-teacher``'s recipe of each architecture family (``recipe_family`` picks one). A
``--optimizer sgd`` given over an AdamW family uses Nesterov momentum, as ``nesterov`` says."""

CAKD_RECIPES: dict[str, Recipe] = {
    # The recipe the nano teachers train with, with plain momentum should --optimizer sgd be given.
    "small": replace(
        TEACHER_RECIPES["nano"],
        source="civt-pipe's CPU-scale defaults for digits (the nano teachers' recipe)",
        nesterov=False,
    ),
    "paper-cifar": Recipe(
        source="Liu et al. ACCV 2022, CIFAR-100",
        optimizer="sgd",
        lr=0.8,
        weight_decay=1e-4,
        epochs=200,
        batch_size=64,
        warmup_epochs=0.0,
        milestones=(100, 150),
    ),
    "paper-imagenet": Recipe(
        source="Liu et al. ACCV 2022, ImageNet",
        optimizer="sgd",
        lr=0.2,
        weight_decay=1e-4,
        epochs=120,
        batch_size=256,
        warmup_epochs=0.0,
        milestones=(60, 90),
    ),
}
"""``train-cakd``'s ``--recipe``."""

RECIPE_TABLES: dict[str, Mapping[str, Recipe]] = {
    "train-teacher": TEACHER_RECIPES,
    "train-student": STUDENT_RECIPES,
    "train-cakd": CAKD_RECIPES,
}
"""Every trainer's table, by command."""


def _cell(recipe: Recipe, name: str) -> str:
    """One field of a recipe as the help lines and the docs table write it."""
    value = getattr(recipe, name)
    if name == "lr":
        return f"{value:g} × global batch / 512"
    if name == "min_lr" and recipe.min_lr_scaled:
        return f"{value:g} × global batch / 512"
    if name == "milestones":
        return ",".join(str(m) for m in value) if value else "none (cosine)"
    if name == "drop_path" and value is None:
        return "preset's"
    if name == "clip_grad" and value is None:
        return "off"
    if value is None:
        return "option default"
    if name == "nesterov" and recipe.optimizer != "sgd":
        return ("yes" if value else "no") + " (with --optimizer sgd)"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:g}" if isinstance(value, float) else str(value)


def recipe_help(name: str, table: Mapping[str, Recipe] = STUDENT_RECIPES) -> str:
    """What each recipe of ``table`` gives field ``name`` (for its ``--help`` line)."""
    parts = [f"{recipe_name} {_cell(recipe, name)}" for recipe_name, recipe in table.items()]
    return f"[default: by --recipe: {'; '.join(parts)}]"


_TABLE_FIELDS: dict[str, tuple[str, ...]] = {
    "train-teacher": (
        "optimizer",
        "lr",
        "weight_decay",
        "epochs",
        "batch_size",
        "warmup_epochs",
        "nesterov",
    ),
    "train-student": ("optimizer", *HYPERPARAMETERS),
    "train-cakd": (
        "optimizer",
        "lr",
        "weight_decay",
        "epochs",
        "batch_size",
        "warmup_epochs",
        "milestones",
        "nesterov",
    ),
}
"""The fields each trainer takes from its recipe (the others keep the type's defaults)."""


def recipes_markdown() -> str:
    """``docs/commands.md``'s "Recipes" tables: one per trainer, one row per recipe, the columns
    the trainer takes from it (``tests/test_run_skeleton.py`` keeps the docs equal)."""
    blocks = []
    for command, table in RECIPE_TABLES.items():
        columns = _TABLE_FIELDS[command]
        key = "family" if command == "train-teacher" else "--recipe"
        lines = [
            f"**{command}**",
            "",
            "| " + " | ".join([key, *(c.replace("_", " ") for c in columns), "source"]) + " |",
            "|" + "---|" * (len(columns) + 2),
        ]
        for recipe_name, recipe in table.items():
            cells = [f"`{recipe_name}`", *(_cell(recipe, c) for c in columns), recipe.source]
            lines.append("| " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


@dataclass(frozen=True, slots=True)
class Resolved:
    """A hyper-parameter's value and where it came from."""

    value: float | int | None
    source: str

    def to_dict(self) -> dict[str, float | int | str | None]:
        """``{"value": ..., "from": ...}`` for ``config.json``."""
        return {"value": self.value, "from": self.source}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def resolve_hyperparameters(
    recipe_name: str,
    given: Mapping[str, float | None],
    *,
    global_batch: int,
    preset_drop_path: float | None,
    sources: Mapping[str, str] | None = None,
) -> dict[str, Resolved]:
    """Every hyper-parameter of :data:`HYPERPARAMETERS` with its provenance.

    Args:
        recipe_name: one of :data:`RECIPES`.
        given: the config's values; ``None`` means "take the recipe's".
        global_batch: images per optimizer step over all ranks (learning rates scale with it).
        preset_drop_path: the student preset's own drop-path default, ``None`` when the preset
            has no stochastic depth (then a recipe's drop path does not apply).
        sources: where each given value came from (the config's ``sources``): a value from
            ``config-file`` says so; any other given value is from the command line.

    ``clip_grad`` 0 (given) means no clipping and resolves to ``None``. ``min_lr`` is capped at
    the resolved ``lr``.
    """
    recipe = STUDENT_RECIPES[recipe_name]
    tag = f"recipe {recipe_name}"
    out: dict[str, Resolved] = {}
    for name in HYPERPARAMETERS:
        value = given.get(name)
        if value is not None:
            out[name] = Resolved(value, f"{_flag(name)} ({given_in(sources or {}, name)})")
    if "lr" not in out:
        out["lr"] = Resolved(
            recipe.lr * global_batch / 512,
            f"{tag}: {recipe.lr:g} × {global_batch}/512 ({recipe.source})",
        )
    if "min_lr" not in out:
        if recipe.min_lr_scaled:
            out["min_lr"] = Resolved(
                recipe.min_lr * global_batch / 512,
                f"{tag}: {recipe.min_lr:g} × {global_batch}/512 ({recipe.source})",
            )
        else:
            out["min_lr"] = Resolved(recipe.min_lr, f"{tag} ({recipe.source})")
    lr = out["lr"].value
    floor = out["min_lr"]
    if isinstance(lr, float | int) and isinstance(floor.value, float | int) and floor.value > lr:
        out["min_lr"] = Resolved(lr, f"{floor.source}, capped at lr")
    for name in ("warmup_epochs", "weight_decay", "label_smoothing"):
        if name not in out:
            out[name] = Resolved(getattr(recipe, name), f"{tag} ({recipe.source})")
    if "clip_grad" in out:
        if out["clip_grad"].value == 0:
            where = given_in(sources or {}, "clip_grad")
            out["clip_grad"] = Resolved(None, f"--clip-grad 0 ({where}): no clipping")
    elif recipe.clip_grad is None:
        out["clip_grad"] = Resolved(None, f"{tag}: no clipping ({recipe.source})")
    else:
        out["clip_grad"] = Resolved(recipe.clip_grad, f"{tag} ({recipe.source})")
    if "drop_path" not in out:
        if preset_drop_path is None:
            out["drop_path"] = Resolved(None, "the student preset has no drop path")
        elif recipe.drop_path is None:
            out["drop_path"] = Resolved(preset_drop_path, f"{tag}: the student preset's default")
        else:
            out["drop_path"] = Resolved(recipe.drop_path, f"{tag} ({recipe.source})")
    return {name: out[name] for name in HYPERPARAMETERS}
