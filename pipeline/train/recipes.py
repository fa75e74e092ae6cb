"""Named training recipes of ``train-student``: where each optimizer and regularization default
comes from.

A recipe fills the hyper-parameters the user did not give on the command line; a value the user
gives always wins. :func:`resolve_hyperparameters` returns every value with its provenance, which
``train-student`` writes to ``config.json`` (``{"lr": {"value": ..., "from": ...}}``).

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
DeiT's 10 cool-down epochs and weight EMA. ``train-student`` clamps warm-up to a fifth of the
run, so a 20-epoch warm-up still leaves a short run time to decay.

No torch here: the command line imports the recipe names and help texts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from ..runtime.config_file import given_in

RecipeName = Literal["small", "coadvise", "deit"]
"""A named recipe (see the module docstring)."""

RECIPES: tuple[RecipeName, ...] = get_args(RecipeName)
"""Every recipe, the default first."""

HYPERPARAMETERS: tuple[str, ...] = (
    "lr",
    "min_lr",
    "warmup_epochs",
    "weight_decay",
    "label_smoothing",
    "clip_grad",
    "drop_path",
)
"""The config fields a recipe fills (each ``None`` in the config means "from the recipe")."""


@dataclass(frozen=True, slots=True)
class Recipe:
    """One recipe's values; learning rates are for a global batch of 512 where ``scaled``."""

    source: str
    """Where the values come from (shown in ``config.json``)."""
    lr: float
    """Peak learning rate at a global batch of 512, scaled linearly with the batch."""
    min_lr: float
    """Floor of the cosine."""
    min_lr_scaled: bool
    """Whether ``min_lr`` scales with the global batch too (Co-advise: yes; DeiT: no)."""
    warmup_epochs: float
    weight_decay: float
    label_smoothing: float
    clip_grad: float | None
    """Largest gradient norm; ``None``: no clipping."""
    drop_path: float | None
    """Stochastic depth of the student; ``None``: the preset's own default."""


RECIPE_TABLE: dict[RecipeName, Recipe] = {
    "small": Recipe(
        source="civt-pipe's small-data defaults",
        lr=1e-3,
        min_lr=1e-6,
        min_lr_scaled=False,
        warmup_epochs=5.0,
        weight_decay=0.05,
        label_smoothing=0.0,
        clip_grad=None,
        drop_path=None,
    ),
    "coadvise": Recipe(
        source="OliverRensu/co-advise config.py + main.py",
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
        lr=5e-4,
        min_lr=1e-5,
        min_lr_scaled=False,
        warmup_epochs=5.0,
        weight_decay=0.05,
        label_smoothing=0.1,
        clip_grad=None,
        drop_path=0.1,
    ),
}


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


def _off(value: float | None) -> str:
    return "off" if value is None else f"{value:g}"


def recipe_help(name: str) -> str:
    """What each recipe gives field ``name`` (for its ``--help`` line)."""
    parts = []
    for recipe_name, recipe in RECIPE_TABLE.items():
        if name == "lr":
            text = f"{recipe.lr:g} × global batch / 512"
        elif name == "min_lr":
            text = f"{recipe.min_lr:g}" + (" × global batch / 512" if recipe.min_lr_scaled else "")
        elif name == "drop_path":
            text = "preset's" if recipe.drop_path is None else f"{recipe.drop_path:g}"
        else:
            text = _off(getattr(recipe, name))
        parts.append(f"{recipe_name} {text}")
    return f"[default: by --recipe: {'; '.join(parts)}]"


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
    recipe = RECIPE_TABLE[recipe_name]  # type: ignore[index]
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
