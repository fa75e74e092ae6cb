"""The model registry: every architecture by name, how to build it, and its size.

Teachers return logits ``[B, C]``; students return ``dict[str, Tensor]`` (``"cls"`` plus one
entry per teacher, see :mod:`.heads`). Every model is a :class:`.normalize.NormalizedModel`
taking images in [0, 1] and remembering the ``model_args`` that rebuild it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..runtime.errors import UserError
from .civt import CivT
from .heads import HeadPlan
from .mixer import MlpMixer
from .nano import NanoNet
from .normalize import Normalize, NormalizedModel, default_stats
from .rednet import REDNET_DEPTHS, RedNet
from .resnet10 import ResNet10
from .torchvision_teachers import TORCHVISION_BUILDERS, build_torchvision

SMALL_INPUT_MAX_SIZE = 64
"""Images of this many pixels or fewer get the stride-1 stem without max-pool by default."""


@dataclass(frozen=True)
class ModelSpec:
    """One registered architecture.

    Args:
        name: registry name (``--arch`` / ``--model``).
        kind: ``"teacher"`` (logits tensor) or ``"student"`` (dict of logits per head).
        description: one line for ``civt-pipe models``.
        build: makes the body from resolved keyword arguments.
        patch_size: default patch side for patch-based students, ``None`` otherwise.
    """

    name: str
    kind: str
    description: str
    build: Callable[..., nn.Module]
    patch_size: int | None = None


def _vit(dim: int, depth: int, heads: int, drop_path: float) -> Callable[..., nn.Module]:
    def build(
        *, plan: HeadPlan, patch_size: int, drop_path_rate: float | None, **kw: Any
    ) -> nn.Module:
        rate = drop_path if drop_path_rate is None else drop_path_rate
        return CivT(
            teacher_names=plan.teacher_names,
            token_mode=plan.token_mode,
            patch_size=patch_size,
            embed_dim=dim,
            depth=depth,
            num_heads=heads,
            drop_path_rate=rate,
            image_size=kw["image_size"],
            in_chans=kw["in_chans"],
            num_classes=kw["num_classes"],
        )

    return build


def _specs() -> dict[str, ModelSpec]:
    specs: list[ModelSpec] = []
    for name in TORCHVISION_BUILDERS:
        specs.append(
            ModelSpec(
                name,
                "teacher",
                f"torchvision {name} (convolution)",
                functools.partial(_tv, name),
            )
        )
    for depth in REDNET_DEPTHS:
        specs.append(
            ModelSpec(
                f"rednet{depth}",
                "teacher",
                f"RedNet-{depth} (involution)",
                functools.partial(_rednet, depth),
            )
        )
    specs.append(
        ModelSpec(
            "cnn-nano",
            "teacher",
            "3-stage CNN for CPUs and tiny images",
            functools.partial(_nano, "conv"),
        )
    )
    specs.append(
        ModelSpec(
            "inn-nano",
            "teacher",
            "cnn-nano with involution for convolution",
            functools.partial(_nano, "involution"),
        )
    )
    specs.append(
        ModelSpec("civt-ti", "student", "CivT-Ti: ViT 192×12, 3 heads", _vit(192, 12, 3, 0.1), 16)
    )
    specs.append(
        ModelSpec("civt-s", "student", "CivT-S: ViT 384×12, 6 heads", _vit(384, 12, 6, 0.1), 16)
    )
    specs.append(
        ModelSpec(
            "civt-nano", "student", "CivT for CPUs: ViT 96×6, 3 heads", _vit(96, 6, 3, 0.0), 4
        )
    )
    specs.append(ModelSpec("resnet10", "student", "ResNet-10, one head per target", _resnet10))
    specs.append(
        ModelSpec("mixer-ti", "student", "MLP-Mixer-Ti 192×12, one head per target", _mixer, 16)
    )
    return {spec.name: spec for spec in specs}


def _tv(name: str, *, num_classes: int, in_chans: int, small_input: bool, **_: Any) -> nn.Module:
    return build_torchvision(
        name, num_classes=num_classes, in_chans=in_chans, small_input=small_input
    )


def _rednet(
    depth: int, *, num_classes: int, in_chans: int, small_input: bool, **_: Any
) -> nn.Module:
    return RedNet(
        REDNET_DEPTHS[depth], num_classes=num_classes, in_chans=in_chans, small_input=small_input
    )


def _nano(
    spatial: str, *, num_classes: int, in_chans: int, small_input: bool, **_: Any
) -> nn.Module:
    return NanoNet(spatial, num_classes=num_classes, in_chans=in_chans, small_input=small_input)


def _resnet10(
    *, num_classes: int, in_chans: int, small_input: bool, plan: HeadPlan, **_: Any
) -> nn.Module:
    return ResNet10(num_classes=num_classes, in_chans=in_chans, small_input=small_input, plan=plan)


def _mixer(
    *, num_classes: int, in_chans: int, image_size: int, patch_size: int, plan: HeadPlan, **_: Any
) -> nn.Module:
    return MlpMixer(
        image_size=image_size,
        patch_size=patch_size,
        in_chans=in_chans,
        num_classes=num_classes,
        plan=plan,
    )


SPECS: dict[str, ModelSpec] = _specs()


def list_models(kind: str | None = None) -> list[str]:
    """Registered names (teachers first, in registration order); ``kind`` filters."""
    return [name for name, spec in SPECS.items() if kind is None or spec.kind == kind]


def get_spec(name: str) -> ModelSpec:
    """The spec of ``name``; an unknown name is a :class:`UserError` listing the known ones."""
    if name not in SPECS:
        raise UserError(f"unknown architecture {name!r}; known: {', '.join(SPECS)}")
    return SPECS[name]


def _check_common(arch: str, kind: str, num_classes: int, image_size: int) -> ModelSpec:
    spec = get_spec(arch)
    if spec.kind != kind:
        raise UserError(
            f"{arch} is a {spec.kind} architecture, not a {kind}; {kind}s: "
            f"{', '.join(list_models(kind))}"
        )
    if num_classes < 1:
        raise UserError(f"num_classes must be at least 1, got {num_classes}")
    if image_size < 1:
        raise UserError(f"image_size must be at least 1, got {image_size}")
    return spec


def build_teacher(
    arch: str,
    *,
    num_classes: int,
    in_chans: int = 3,
    image_size: int = 224,
    small_input: bool | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> NormalizedModel:
    """A teacher with random weights; its forward maps [0, 1] images to logits ``[B, C]``.

    Args:
        arch: a teacher name from :func:`list_models`.
        num_classes: classifier outputs.
        in_chans: image channels (1 for grayscale).
        image_size: training/eval image side; decides ``small_input`` when that is ``None``.
        small_input: force (True) or forbid (False) the 3×3 stride-1 stem without max-pool.
        mean: per-channel normalization mean (defaults: ImageNet).
        std: per-channel normalization std.
    """
    spec = _check_common(arch, "teacher", num_classes, image_size)
    mean_t, std_t = default_stats(in_chans, mean, std)
    small = image_size <= SMALL_INPUT_MAX_SIZE if small_input is None else bool(small_input)
    args: dict[str, Any] = {
        "num_classes": num_classes,
        "in_chans": in_chans,
        "image_size": image_size,
        "small_input": small,
        "mean": list(mean_t),
        "std": list(std_t),
    }
    body = spec.build(
        num_classes=num_classes, in_chans=in_chans, small_input=small, image_size=image_size
    )
    return NormalizedModel(
        Normalize(mean_t, std_t), body, arch=arch, kind="teacher", model_args=args
    )


def build_student(
    arch: str,
    *,
    num_classes: int,
    in_chans: int = 3,
    image_size: int = 224,
    teacher_names: Sequence[str] = (),
    token_mode: str = "per-teacher",
    patch_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    small_input: bool | None = None,
    drop_path_rate: float | None = None,
) -> NormalizedModel:
    """A student with random weights; its forward returns ``{"cls": ..., <teacher>: ...}``.

    Args:
        arch: a student name from :func:`list_models`.
        num_classes: outputs of every head.
        in_chans: image channels.
        image_size: square input side (patch students: a multiple of the patch size).
        teacher_names: one distillation head per name (see :class:`.heads.HeadPlan`).
        token_mode: ``"per-teacher"``, ``"shared"`` or ``"none"``.
        patch_size: patch side for CivT / Mixer (default: the preset's).
        mean: per-channel normalization mean.
        std: per-channel normalization std.
        small_input: ResNet-10 stem choice (default: ``image_size <= 64``).
        drop_path_rate: CivT stochastic depth (default: the preset's, 0.1 for -ti/-s).
    """
    spec = _check_common(arch, "student", num_classes, image_size)
    plan = HeadPlan(tuple(teacher_names), token_mode)
    mean_t, std_t = default_stats(in_chans, mean, std)
    if spec.patch_size is None:
        if patch_size is not None:
            raise UserError(f"{arch} is not a patch model; do not give it a patch size")
    else:
        patch_size = spec.patch_size if patch_size is None else patch_size
        if patch_size < 1 or image_size % patch_size != 0:
            raise UserError(
                f"image size {image_size} is not a multiple of {arch}'s patch size {patch_size}"
            )
    if drop_path_rate is not None and not 0.0 <= drop_path_rate < 1.0:
        raise UserError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
    small = image_size <= SMALL_INPUT_MAX_SIZE if small_input is None else bool(small_input)
    args: dict[str, Any] = {
        "num_classes": num_classes,
        "in_chans": in_chans,
        "image_size": image_size,
        "teacher_names": list(plan.teacher_names),
        "token_mode": token_mode,
        "patch_size": patch_size,
        "mean": list(mean_t),
        "std": list(std_t),
        "small_input": small,
        "drop_path_rate": drop_path_rate,
    }
    body = spec.build(
        num_classes=num_classes,
        in_chans=in_chans,
        image_size=image_size,
        small_input=small,
        patch_size=patch_size,
        plan=plan,
        drop_path_rate=drop_path_rate,
    )
    return NormalizedModel(
        Normalize(mean_t, std_t), body, arch=arch, kind="student", model_args=args
    )


def build_model(arch: str, model_args: dict[str, Any]) -> NormalizedModel:
    """Rebuild a model from its registry name and saved ``model_args`` (teacher or student)."""
    spec = get_spec(arch)
    builder = build_teacher if spec.kind == "teacher" else build_student
    try:
        return builder(arch, **model_args)
    except TypeError as err:
        raise UserError(f"model arguments {sorted(model_args)} do not fit {arch}: {err}") from None


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers such as the normalization excluded)."""
    return sum(p.numel() for p in model.parameters())


@functools.cache
def reference_parameter_count(arch: str, num_classes: int = 1000, image_size: int = 224) -> int:
    """Parameters of ``arch`` at ``num_classes`` and ``image_size`` (students: no teacher).

    Built on the meta device where the constructor allows it (no memory, no init cost); a
    constructor that computes with tensors (torchvision's RegNet widths) is built on the CPU.
    """
    spec = get_spec(arch)
    builder = build_teacher if spec.kind == "teacher" else build_student
    try:
        with torch.device("meta"):
            model = builder(arch, num_classes=num_classes, image_size=image_size)
    except RuntimeError:  # an op the meta device lacks (its error subclasses RuntimeError)
        model = builder(arch, num_classes=num_classes, image_size=image_size)
    return count_parameters(model)


def describe_models() -> list[dict[str, Any]]:
    """One row per architecture: name, kind, parameters at 1000 classes / 224 px, description."""
    return [
        {
            "name": name,
            "kind": spec.kind,
            "params": reference_parameter_count(name),
            "description": spec.description,
            "patch_size": spec.patch_size,
        }
        for name, spec in SPECS.items()
    ]
