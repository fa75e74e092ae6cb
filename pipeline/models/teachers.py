"""Teachers as the stages use them: ``--teacher NAME=ARCH:CKPT`` specs, loaded and checked.

Both stage one (``dump-logits``) and online distillation (``train-student --teacher``) load their
teachers here, so a store and a live run see the same frozen models and record the same facts
(:class:`~..stores.schema.TeacherInfo`: arch, checkpoint digest, normalization, metrics).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...stores.schema import TeacherInfo
from ..runtime.console import warn
from ..runtime.errors import UserError
from . import zoo_timm
from .checkpoint import file_sha256, model_from_checkpoint
from .factory import get_preset
from .normalize import NormalizedModel
from .teacher_spec import TeacherSpec


@dataclass
class LoadedTeacher:
    """A teacher ready to run: the model (eval mode, on the device) and what the store records."""

    info: TeacherInfo
    model: nn.Module
    image_size: int


def load_teachers(
    specs: Sequence[TeacherSpec],
    device: torch.device,
    *,
    num_classes: int,
    channels: int,
    image_size: int | None = None,
) -> list[LoadedTeacher]:
    """Load every ``--teacher`` (eval mode, on ``device``) and check they fit the data and agree.

    Raises ``UserError`` when a checkpoint is missing, holds another architecture or class
    count, or when teachers disagree on their input size (all views are rendered once, at one
    size, for every teacher). Channels are adapted to the data's by the checkpoint loader.
    """
    loaded: list[LoadedTeacher] = []
    for spec in specs:
        weights = teacher_weights(spec)
        model, meta = load_teacher(
            spec, device, num_classes=num_classes, channels=channels, image_size=image_size
        )
        size = int(meta["image_size"])
        if loaded and size != loaded[0].image_size:
            first = loaded[0]
            raise UserError(
                f"teacher {spec.name!r} takes {size} px images but {first.info.name!r} takes "
                f"{first.image_size} px; all teachers must share one input size"
            )
        pretrained = meta.get("pretrained_cfg") or {}
        trained_at = int((pretrained.get("input_size") or [0])[-1])
        if trained_at and trained_at != size:
            warn(
                f"teacher {spec.name!r} ({meta['arch']}) was pretrained at {trained_at} px and "
                f"sees {size} px views; its accuracy may fall (docs/models.md)"
            )
        info = TeacherInfo(
            name=spec.name,
            arch=str(meta["arch"]),
            checkpoint_sha256=file_sha256(weights),
            num_classes=int(meta["num_classes"]),
            pretrained_cfg=meta.get("pretrained_cfg"),
            meta={
                "checkpoint": str(weights),
                "image_size": size,
                "in_chans": int(meta["in_chans"]),
                "mean": [float(x) for x in meta["mean"]],
                "std": [float(x) for x in meta["std"]],
                "metrics": _json_safe(meta.get("metrics") or {}),
            },
        )
        loaded.append(LoadedTeacher(info=info, model=model, image_size=size))
    return loaded


def teacher_weights(spec: TeacherSpec) -> Path:
    """The weights file of ``spec``: its own, or a timm model's from timm's offline cache.

    A timm model without a file and without cached weights is one line naming the file to
    fetch; nothing is downloaded.
    """
    if spec.checkpoint is not None:
        return spec.checkpoint
    found = zoo_timm.cached_weights(spec.arch) if zoo_timm.is_timm(spec.arch) else None
    if found is None:
        raise UserError(zoo_timm.missing_weights_message(spec.arch, spec.name))
    return found


def load_teacher(
    spec: TeacherSpec,
    device: torch.device,
    *,
    num_classes: int,
    channels: int,
    image_size: int | None = None,
) -> tuple[NormalizedModel, dict[str, Any]]:
    """One teacher's model (eval mode, on ``device``) and its checkpoint meta, which holds the
    ``pretrained_cfg`` of a zoo teacher (``evaluate --arch`` loads a zoo file with it)."""
    get_preset(spec.arch, kind="teacher")  # an unknown name before a missing file
    return model_from_checkpoint(
        teacher_weights(spec),
        device=device,
        expect_kind="teacher",
        expect_num_classes=num_classes,
        arch=spec.arch,
        in_chans=channels,
        image_size=image_size,
    )


def _json_safe(obj: Any) -> Any:
    """Checkpoint metrics as plain JSON (numbers, strings, lists, dicts); others as strings."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (bool, int, float, str)) or obj is None:
        return obj
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    return str(obj)
