"""``civt-pipe export``: a checkpoint as a file other tools load, with a JSON manifest beside it.

Three forms (docs/export.md):

- ``timm``: students and our ViT teachers as timm's ``VisionTransformer`` /
  ``VisionTransformerDistilled`` state dict (:mod:`.timm_form`), other teachers as
  torchvision's (:mod:`.torchvision_form`); a ``.safetensors``
  OUT is written as safetensors, any other name with ``torch.save``. The input normalization is
  not folded in: ``pretrained_cfg`` says which mean/std the inputs need, as timm's own do;
- ``safetensors``: our checkpoint's weights and metadata (every head), which ``evaluate``,
  ``--init`` and teacher specs load like the ``.pt`` (:func:`..models.checkpoint.save_safetensors`);
- ``torchscript``: the traced model returning one head's logits from images in [0, 1]
  (normalization inside), for ``torch.jit.load``;
- ``onnx``: the same module as an ONNX graph (:mod:`.onnx_form`) with a dynamic batch axis,
  for onnxruntime and serving stacks (the ``[onnx]`` extra).

``OUT.json`` (OUT's name plus ``.json``) records the form, the head(s) the file carries, the
arguments that build the model, ``pretrained_cfg`` (input size, mean, std, crop, interpolation,
classes), the class names and the source checkpoint's sha256.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...data.eval_view import EVAL_CROP_PCT, EVAL_DIRECT_MAX
from ...models.checkpoint import (
    SAFETENSORS_SUFFIX,
    file_sha256,
    make_checkpoint,
    model_from_checkpoint,
    safetensors_bytes,
)
from ...models.heads import MEAN, inference_head, prediction
from ...models.normalize import NormalizedModel
from ...runtime.atomic import atomic_write_bytes, atomic_write_json, check_output_file
from ...runtime.errors import UserError
from .config import ExportConfig, manifest_file
from .timm_form import has_timm_form, timm_form
from .torchvision_form import torchvision_form

TEACHER_HEAD = "logits"
"""What ``evaluate`` calls a teacher's one output; the manifest uses the same name."""


class HeadLogits(nn.Module):
    """``model``'s ``head`` logits from images in [0, 1] (the module TorchScript traces)."""

    def __init__(self, model: NormalizedModel, head: str) -> None:
        super().__init__()
        self.model = model
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return prediction(self.model(x), self.head)


def export(cfg: ExportConfig) -> dict[str, Any]:
    """Write ``cfg.out`` in ``cfg.format`` and its manifest; returns the manifest plus the paths.

    Everything is checked before anything is written: the outputs (existing files need
    ``overwrite``), the checkpoint, the head, and whether the form can carry the model.
    """
    out, manifest_path = cfg.out, manifest_file(cfg.out)
    check_output_file(out)
    if out.resolve() == cfg.checkpoint.resolve():
        raise UserError(f"{out} is the checkpoint being exported; write the export elsewhere")
    for path in (out, manifest_path):
        if path.exists() and not cfg.overwrite:
            raise UserError(f"{path} exists; pass --overwrite to replace it")
    model, meta = model_from_checkpoint(cfg.checkpoint)
    heads = _heads(model)
    head = _resolve_head(model, heads, cfg.head)
    manifest: dict[str, Any] = {
        "format": cfg.format,
        "file": out.name,
        "source": {
            "checkpoint": str(cfg.checkpoint),
            "sha256": file_sha256(cfg.checkpoint),
            "arch": model.arch,
            "kind": model.kind,
        },
        "head": head,
        "class_names": meta.get("class_names"),
    }
    if cfg.format == "timm":
        data = _timm_or_torchvision(model, head, out, manifest)
    elif cfg.format == "safetensors":
        ckpt = make_checkpoint(
            model,
            class_names=meta.get("class_names"),
            metrics=meta.get("metrics"),
            config=meta.get("config"),
        )
        data = safetensors_bytes(ckpt)
        manifest.update(
            form="civt-pipe",
            heads=heads,
            input="images in [0, 1]: the weights hold normalize.mean/std",
            pretrained_cfg=pretrained_cfg(model),
            civt_pipe={"arch": model.arch, "model_args": dict(model.model_args)},
        )
    elif cfg.format == "onnx":
        from .onnx_form import onnx_bytes

        data = onnx_bytes(HeadLogits(model, head).eval(), _example(model))
        manifest.update(
            form="onnx",
            heads=[head],
            input="images in [0, 1], float32 NCHW named 'images', any batch size: the "
            "normalization is inside the graph",
            output="'logits' [batch, num_classes] float32",
            pretrained_cfg=pretrained_cfg(model),
        )
    else:
        data = _torchscript(model, head)
        manifest.update(
            form="torchscript",
            heads=[head],
            input="images in [0, 1]: the normalization is inside the traced model",
            pretrained_cfg=pretrained_cfg(model),
        )
    atomic_write_bytes(out, data)
    atomic_write_json(manifest_path, manifest)  # last: a manifest means the export is whole
    return {**manifest, "out": str(out), "manifest": str(manifest_path)}


def _heads(model: NormalizedModel) -> list[str]:
    """The heads of a student (its outputs, then ``mean``); a teacher's one output."""
    if model.kind == "teacher":
        return [TEACHER_HEAD]
    args = model.model_args
    probe = torch.zeros(1, int(args["in_chans"]), int(args["image_size"]), int(args["image_size"]))
    with torch.no_grad():
        outputs = model(probe)
    return [*outputs, MEAN]


def _resolve_head(model: NormalizedModel, heads: list[str], head: str | None) -> str:
    if model.kind == "teacher":
        if head not in (None, TEACHER_HEAD):
            raise UserError(
                f"--head {head}: {model.arch} is a teacher with one output; cls, mean and "
                "teacher tokens are CivT student heads (leave --head out)"
            )
        return TEACHER_HEAD
    chosen = head or inference_head(model)
    if chosen not in heads:
        raise UserError(f"unknown head {chosen!r}; {model.arch} has: {', '.join(heads)}")
    return chosen


def pretrained_cfg(model: NormalizedModel, **extra: Any) -> dict[str, Any]:
    """timm's ``pretrained_cfg`` for ``model``'s inputs: how ``evaluate`` prepares an image
    (see ``data.eval_view.eval_view``) and the normalization the model was trained with."""
    args = model.model_args
    size, chans = int(args["image_size"]), int(args["in_chans"])
    return {
        "input_size": [chans, size, size],
        "mean": list(args["mean"]),
        "std": list(args["std"]),
        "crop_pct": 1.0 if size <= EVAL_DIRECT_MAX else EVAL_CROP_PCT,
        "interpolation": "bilinear",
        "num_classes": int(args["num_classes"]),
        "fixed_input_size": True,
        **extra,
    }


def _state_bytes(state: dict[str, Tensor], out: Path) -> bytes:
    """A bare state dict as safetensors (OUT ends in .safetensors) or ``torch.save`` bytes."""
    if out.suffix == SAFETENSORS_SUFFIX:
        from safetensors.torch import save

        return save({k: v.contiguous() for k, v in state.items()}, metadata={"format": "pt"})
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _timm_or_torchvision(
    model: NormalizedModel, head: str, out: Path, manifest: dict[str, Any]
) -> bytes:
    """Bytes of the timm (student) or torchvision (teacher) form; fills in ``manifest``."""
    normalized = "normalized with pretrained_cfg mean/std (not folded into the weights)"
    if model.kind == "teacher" and not has_timm_form(model):
        tv = torchvision_form(model)
        first = "conv1" if "conv1.weight" in tv.state_dict else "stem.0"
        manifest.update(
            form="torchvision",
            heads=[TEACHER_HEAD],
            input=normalized,
            pretrained_cfg=pretrained_cfg(model, first_conv=first, classifier="fc"),
            torchvision={"builder": tv.builder, "builder_args": tv.builder_args, "stem": tv.stem},
        )
        return _state_bytes(tv.state_dict, out)
    form = timm_form(model, head)
    classifier: str | list[str] = (
        form.classifier[0] if len(form.classifier) == 1 else list(form.classifier)
    )
    manifest.update(
        form="timm",
        heads=list(form.heads),
        input=normalized,
        pretrained_cfg=pretrained_cfg(model, first_conv="patch_embed.proj", classifier=classifier),
        timm={
            "model_name": form.model_name,
            "model_class": form.model_class,
            "model_args": form.model_args,
        },
    )
    return _state_bytes(form.state_dict, out)


def _example(model: NormalizedModel) -> Tensor:
    """A seeded batch of two images in [0, 1] of ``model``'s input shape (to trace or export)."""
    args = model.model_args
    size = int(args["image_size"])
    return torch.rand(
        2, int(args["in_chans"]), size, size, generator=torch.Generator().manual_seed(0)
    )


def _torchscript(model: NormalizedModel, head: str) -> bytes:
    """The traced :class:`HeadLogits` of ``model`` (batch size free, input side fixed)."""
    example = _example(model)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # torch >= 2.9 marks TorchScript deprecated in favour of torch.export; it still writes
        # and loads, and the user asked for this form by name.
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated")
        # No check_trace: it would run the model twice more; tests/test_export.py checks that a
        # traced export returns the head's logits at another batch size.
        traced = torch.jit.trace(HeadLogits(model, head).eval(), example, check_trace=False)
        torch.jit.save(traced, buffer)
    return buffer.getvalue()
