"""``create_model``: every registered preset by name, checked, normalized and ready to train.

Teachers return logits ``[B, C]``; students return ``dict[str, Tensor]`` (``"cls"`` plus one
entry per teacher, see :mod:`.heads`). Every model comes wrapped in a
:class:`.normalize.NormalizedModel` that takes images in [0, 1] and remembers the
``model_args`` that rebuild it: ``create_model(model.arch, **model.model_args)``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..runtime.errors import UserError

# Importing the model files runs their @register_model presets; nothing else here uses them.
from . import (  # noqa: F401
    civt,
    mixer,
    nano,
    rednet,
    resnet10,
    torchvision_teachers,
    vit_teachers,
    zoo_timm,
)
from .normalize import Normalize, NormalizedModel, default_stats
from .registry import PRESETS, ModelKind, ModelPreset

SMALL_INPUT_MAX_SIZE = 64
"""Images of this many pixels or fewer get the stride-1 stem without max-pool by default."""

INPUTS: dict[str, int | None] = {"num_classes": None, "in_chans": 3, "image_size": 224}
"""What every model is built for, with defaults (``None``: required). A preset receives those
its function names; all are recorded in ``model_args``."""

NORMALIZATION: tuple[str, ...] = ("mean", "std")
"""Every model's input normalization (see :func:`.normalize.default_stats`)."""


def list_models(kind: ModelKind | None = None) -> list[str]:
    """Registered names, teachers first, each kind in registration order; ``kind`` filters."""
    kinds: tuple[ModelKind, ...] = ("teacher", "student") if kind is None else (kind,)
    return [name for k in kinds for name, preset in PRESETS.items() if preset.kind == k]


def get_preset(name: str, *, kind: ModelKind | None = None) -> ModelPreset:
    """The preset ``name``; an unknown name, or one of another ``kind``, is a :class:`UserError`.

    ``timm:MODEL`` names any timm model (a teacher; see :mod:`.zoo_timm`).
    """
    if zoo_timm.is_timm(name):
        preset = zoo_timm.timm_preset(name)
    elif name not in PRESETS:
        raise UserError(
            f"unknown architecture {name!r}; known: {', '.join(list_models())}, timm:MODEL"
        )
    else:
        preset = PRESETS[name]
    if kind is not None and preset.kind != kind:
        raise UserError(
            f"{name} is a {preset.kind} architecture, not a {kind}; {kind}s: "
            f"{', '.join(list_models(kind))}"
        )
    return preset


def is_convolutional(name: str) -> bool:
    """Whether preset ``name`` is a convolution/involution network (it has an inductive
    ``bias``): those run channels-last on CUDA (:func:`..runtime.precision.prepare_model`)."""
    return get_preset(name).bias is not None


def accepted_arguments(name: str) -> list[str]:
    """Keyword arguments :func:`create_model` takes for ``name``, in ``model_args`` order."""
    own = [p for p in get_preset(name).parameters if p not in INPUTS]
    return [*INPUTS, *own, *NORMALIZATION]


def create_model(name: str, /, **kwargs: Any) -> NormalizedModel:
    """Build preset ``name`` with random weights.

    Arguments given as ``None`` take their default (as in timm), so callers can pass optional
    settings through unchanged. Any other argument the preset does not take is a
    :class:`UserError` naming it and the preset: nothing is dropped silently.

    Args:
        name: a name from :func:`list_models`.
        **kwargs: ``num_classes`` (required), ``in_chans`` (3), ``image_size`` (224),
            ``mean``/``std`` (see :func:`.normalize.default_stats`), and the options of the
            preset's function (``civt-pipe models`` lists them), e.g. ``teacher_names``,
            ``token_mode``, ``align`` (CivT with ``token_mode="aligned"``: each teacher's
            ``"conv"``/``"inv"`` role), ``patch_size``, ``drop_path_rate``. ``small_input`` (3×3
            stride-1 stem without max-pool), for presets that take it, defaults to
            ``image_size <= 64``.
    """
    preset = get_preset(name)
    if zoo_timm.is_timm(name) and "mean" not in kwargs:
        # A timm model normalizes as it was pretrained (its pretrained_cfg), not as ImageNet.
        cfg = zoo_timm.pretrained_config(name)
        chans = int(kwargs.get("in_chans") or 3)
        cfg_mean, cfg_std = list(cfg.get("mean") or ()), list(cfg.get("std") or ())
        if cfg_mean and len(cfg_mean) != chans:  # other channels: the channel average each
            cfg_mean = [sum(cfg_mean) / len(cfg_mean)] * chans
            cfg_std = [sum(cfg_std) / len(cfg_std)] * chans
        kwargs = {**kwargs, "mean": cfg_mean or None, "std": cfg_std or None}
    given = {key: value for key, value in kwargs.items() if value is not None}
    accepted = accepted_arguments(name)
    unknown = [key for key in given if key not in accepted]
    if unknown:
        raise UserError(
            f"{name} does not take {', '.join(unknown)}; it takes {', '.join(accepted)}"
        )
    args: dict[str, Any] = {}
    for key, default in INPUTS.items():
        value = given.get(key, default)
        if value is None:
            raise UserError(f"{name} needs {key}")
        args[key] = int(value)
    for key, param in preset.parameters.items():
        if key in INPUTS:
            continue
        if key in given:
            args[key] = given[key]
        elif key == "small_input":
            args[key] = args["image_size"] <= SMALL_INPUT_MAX_SIZE
        elif param.default is inspect.Parameter.empty:
            raise UserError(f"{name} needs {key}")
        else:
            args[key] = param.default
    _check_arguments(name, args)
    mean, std = default_stats(args["in_chans"], given.get("mean"), given.get("std"))
    body = preset.fn(**{key: args[key] for key in preset.parameters})
    # Sequences and mappings are recorded as lists and dicts: checkpoints and JSON configs hold
    # plain containers.
    record = {key: _plain(value) for key, value in args.items()}
    record.update(mean=list(mean), std=list(std))
    return NormalizedModel(
        Normalize(mean, std), body, arch=name, kind=preset.kind, model_args=record
    )


def _plain(value: Any) -> Any:
    """``value`` as a JSON-friendly container (tuples as lists, mappings as dicts)."""
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value


def _check_arguments(name: str, args: dict[str, Any]) -> None:
    """One clear line for values that shared options must never have."""
    if args["num_classes"] < 1:
        raise UserError(f"num_classes must be at least 1, got {args['num_classes']}")
    if args["image_size"] < 1:
        raise UserError(f"image_size must be at least 1, got {args['image_size']}")
    patch = args.get("patch_size")
    if patch is not None and (patch < 1 or args["image_size"] % patch != 0):
        raise UserError(
            f"image size {args['image_size']} is not a multiple of {name}'s patch size {patch}"
        )
    rate = args.get("drop_path_rate")
    if rate is not None and not 0.0 <= rate < 1.0:
        raise UserError(f"drop_path_rate must be in [0, 1), got {rate}")


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers such as the normalization excluded)."""
    return sum(p.numel() for p in model.parameters())


@functools.cache
def reference_parameter_count(arch: str, num_classes: int = 1000, image_size: int = 224) -> int:
    """Parameters of ``arch`` at ``num_classes`` and ``image_size`` (students: no teacher).

    Built on the meta device where the constructor allows it (no memory, no init cost); a
    constructor that computes with tensors (torchvision's RegNet widths) is built on the CPU.
    """
    try:
        with torch.device("meta"):
            model = create_model(arch, num_classes=num_classes, image_size=image_size)
    except RuntimeError:  # an op the meta device lacks (its errors subclass RuntimeError)
        model = create_model(arch, num_classes=num_classes, image_size=image_size)
    return count_parameters(model)


def describe_models() -> list[dict[str, Any]]:
    """One row per preset: name, kind, parameters at 1000 classes / 224 px, description,
    default patch size, the published parameter count, a teacher's inductive bias (``"conv"``,
    ``"inv"`` or None) and the options it takes."""
    return [
        {
            "name": name,
            "kind": PRESETS[name].kind,
            "params": reference_parameter_count(name),
            "description": PRESETS[name].description,
            "patch_size": PRESETS[name].patch_size,
            "published_params": PRESETS[name].published_params,
            "bias": PRESETS[name].bias,
            "arguments": accepted_arguments(name),
        }
        for name in list_models()
    ]
