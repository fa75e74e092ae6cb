"""Any timm model as a teacher: ``timm:MODEL`` architectures (the optional ``[timm]`` extra).

A ``timm:MODEL`` name is a preset made on demand (:func:`timm_preset`), so the factory, the
checkpoints and the stages treat it like our own: ``create_model("timm:resnet50", ...)`` builds
timm's model with random weights, wrapped in our normalization. ``MODEL`` is any name
``timm.create_model`` takes, with or without a pretrained tag (``regnety_006.pycls_in1k``).

Its pretrained configuration (mean, std, input size, interpolation, crop) comes from timm's
table, never from the network (:func:`pretrained_config`). Its weights come from a local file or
from files already in timm's caches (:func:`cached_weights`: the Hugging Face hub cache, then the
torch hub cache); nothing here downloads.

Its inductive bias for ``--token-mode aligned`` is declared per timm family
(:data:`CONV_FAMILIES`, :data:`TRANSFORMER_FAMILIES`): the timm module that defines the model.

timm is imported inside the functions: without the extra, naming a ``timm:`` model is one line
naming it (:func:`require_timm`).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from torch import nn

from ..runtime.errors import UserError
from .registry import ModelPreset
from .token_mode import AlignRole

TIMM_PREFIX = "timm:"
INSTALL_HINT = "pip install 'civt-pipe[timm]'"

CONV_FAMILIES: frozenset[str] = frozenset(
    {"resnet", "resnetv2", "regnet", "convnext", "efficientnet", "mobilenetv3", "mobilenetv5"}
)
"""timm modules (``timm.models.<family>``) whose models are convolutional: ResNet (ResNeXt,
SE-ResNet, Wide-ResNet), ResNetV2, RegNet, ConvNeXt, EfficientNet (MobileNetV2, MNASNet, ...) and
MobileNetV3/V4. They take the convolution role in ``--token-mode aligned``."""

TRANSFORMER_FAMILIES: frozenset[str] = frozenset(
    {
        "vision_transformer",
        "vision_transformer_hybrid",
        "vision_transformer_relpos",
        "vision_transformer_sam",
        "deit",
        "beit",
        "eva",
        "cait",
        "xcit",
        "crossvit",
        "swin_transformer",
        "swin_transformer_v2",
        "swin_transformer_v2_cr",
        "twins",
        "tnt",
        "pvt_v2",
        "mvitv2",
        "hiera",
    }
)
"""timm modules of transformers: neither convolution nor involution, so refused by
``--token-mode aligned`` (its two tokens come from a convolution and an involution stem)."""

Family = Literal["conv", "transformer", "other"]

# What a teacher records of timm's pretrained configuration (JSON values only).
_CFG_FIELDS: tuple[str, ...] = (
    "architecture",
    "tag",
    "hf_hub_id",
    "input_size",
    "interpolation",
    "crop_pct",
    "crop_mode",
    "mean",
    "std",
    "num_classes",
    "first_conv",
    "classifier",
)


def is_timm(arch: str) -> bool:
    """Whether ``arch`` names a timm model (``timm:MODEL``)."""
    return arch.startswith(TIMM_PREFIX)


def timm_name(arch: str) -> str:
    """``MODEL`` of ``timm:MODEL``."""
    return arch[len(TIMM_PREFIX) :]


def require_timm() -> Any:
    """The ``timm`` module, or a :class:`UserError` naming the extra that provides it."""
    try:
        import timm
    except ImportError:
        raise UserError(f"timm: teachers need timm, the [timm] extra: {INSTALL_HINT}") from None
    return timm


def _checked_name(arch: str) -> str:
    timm = require_timm()
    name = timm_name(arch)
    base = name.split(".", 1)[0]
    if not name or not timm.is_model(base):
        raise UserError(
            f"{arch}: timm has no model {base!r} (timm.list_models('*pattern*') lists them)"
        )
    return name


def family(arch: str) -> Family:
    """A timm model's family by the timm module defining it (see the tables above)."""
    timm = require_timm()
    module = timm.models.model_entrypoint(_checked_name(arch).split(".", 1)[0]).__module__
    short = module.rsplit(".", 1)[-1]
    if short in CONV_FAMILIES:
        return "conv"
    if short in TRANSFORMER_FAMILIES:
        return "transformer"
    return "other"


def pretrained_config(arch: str) -> dict[str, Any]:
    """timm's pretrained configuration of ``timm:MODEL[.TAG]`` as plain JSON (from timm's table;
    no file or network): mean, std, input size, interpolation, crop percentage and mode..."""
    timm = require_timm()
    cfg = timm.models.get_pretrained_cfg(_checked_name(arch), allow_unregistered=True)
    if cfg is None:
        return {}
    raw = cfg.to_dict()
    out: dict[str, Any] = {}
    for key in _CFG_FIELDS:
        value = raw.get(key)
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def _fixed_size(arch: str) -> bool:
    """Whether the model is built for one input size (ViTs: position embeddings)."""
    timm = require_timm()
    cfg = timm.models.get_pretrained_cfg(_checked_name(arch), allow_unregistered=True)
    return bool(cfg is not None and cfg.fixed_input_size)


def build_timm(arch: str, *, num_classes: int, in_chans: int, image_size: int) -> nn.Module:
    """timm's model ``arch`` with random weights; models of a fixed input size (ViTs: position
    embeddings) are built for ``image_size``."""
    timm = require_timm()
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_chans}
    if _fixed_size(arch):
        kwargs["img_size"] = image_size
    return timm.create_model(_checked_name(arch), pretrained=False, **kwargs)


def filter_state(arch: str, state: dict[str, Any], body: nn.Module) -> dict[str, Any]:
    """``state`` through the ``checkpoint_filter_fn`` of the timm module defining ``arch``
    (what timm applies to pretrained weights: original-format renames, a ViT's position
    embeddings resampled to ``body``'s grid); unchanged where the module has none."""
    import sys

    timm = require_timm()
    module = timm.models.model_entrypoint(_checked_name(arch).split(".", 1)[0]).__module__
    filter_fn = getattr(sys.modules[module], "checkpoint_filter_fn", None)
    if filter_fn is None:
        return state
    try:
        return dict(filter_fn(state, body))
    except Exception as err:  # another model's file can make a filter fail in any way
        raise UserError(
            f"weights do not fit {arch} (timm's checkpoint filter: {err!r:.120})"
        ) from None


@functools.cache
def timm_preset(arch: str) -> ModelPreset:
    """The preset of ``timm:MODEL`` (made once per name; timm's model with random weights)."""
    _checked_name(arch)
    bias: AlignRole | None = "conv" if family(arch) == "conv" else None

    def build(*, num_classes: int, in_chans: int, image_size: int) -> nn.Module:
        return build_timm(arch, num_classes=num_classes, in_chans=in_chans, image_size=image_size)

    return ModelPreset(arch, "teacher", f"timm {timm_name(arch)}", build, None, bias)


# ------------------------------------------------------------------------- offline caches


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, as ``huggingface_hub`` resolves it (read now, not at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(home) / "hub"


def torch_hub_checkpoints() -> Path:
    """torch hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


_HF_FILES: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")  # timm's order


def cached_weights(arch: str) -> Path | None:
    """A weights file of ``timm:MODEL[.TAG]`` already in timm's caches, or None.

    Looks (files only, no network) in the Hugging Face hub cache for the model's ``hf_hub_id``
    (``model.safetensors``, then ``pytorch_model.bin``), then in torch hub's checkpoint folder
    for the file its ``url`` names.
    """
    cfg = pretrained_config(arch)
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in _HF_FILES:
            found = try_to_load_from_cache(hub_id, filename, cache_dir=hf_cache_dir())
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
    url = _url(arch)
    if url:
        candidate = torch_hub_checkpoints() / os.path.basename(urlparse(url).path)
        if candidate.is_file():
            return candidate
    return None


def _url(arch: str) -> str | None:
    timm = require_timm()
    cfg = timm.models.get_pretrained_cfg(_checked_name(arch), allow_unregistered=True)
    return None if cfg is None else (cfg.url or None)


def missing_weights_message(arch: str, teacher: str) -> str:
    """One line: no weights for ``arch``, and which file to fetch where (nothing is downloaded)."""
    hub_id, url = pretrained_config(arch).get("hf_hub_id"), _url(arch)
    if hub_id:
        fetch = (
            f"hf://{hub_id}/model.safetensors into {hf_cache_dir()} "
            f"(huggingface-cli download {hub_id})"
        )
    elif url:
        fetch = f"{url} into {torch_hub_checkpoints()}"
    else:
        fetch = "the model's weights"
    return (
        f"teacher {teacher!r} ({arch}) has no weights file and none is in timm's offline cache: "
        f"give one ({teacher}={arch}:FILE) or fetch {fetch}; nothing is downloaded here"
    )
