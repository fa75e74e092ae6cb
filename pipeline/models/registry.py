"""The preset table and the ``@register_model`` decorator that fills it.

Each model file ends with its presets, as in timm: small typed functions whose keyword
parameters are the options the preset takes (with the preset's defaults), decorated with the
facts ``civt-pipe models`` shows::

    @register_model("civt-ti", kind="student", description="CivT-Ti: ViT 192×12, 3 heads")
    def civt_ti(*, num_classes: int, ..., patch_size: int = 16) -> CivT:
        model_args = dict(embed_dim=192, depth=12, num_heads=3)
        return CivT(..., patch_size=patch_size, **model_args)

This module imports no model, so every model file can import it without a cycle. Building
goes through :func:`.factory.create_model`, which imports every model file and so sees every
preset.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from torch import nn

from .token_mode import AlignRole

ModelKind = Literal["teacher", "student"]
"""A teacher returns logits ``[B, C]``; a student a dict of logits per head (see ``heads``)."""

_Fn = TypeVar("_Fn", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class ModelPreset:
    """One registered preset: how to build its body and what ``civt-pipe models`` says of it.

    Args:
        name: registry name (``--arch`` / ``--model``).
        kind: ``"teacher"`` or ``"student"``.
        description: one line for ``civt-pipe models``.
        fn: the preset function; its keyword-only parameters are the options it takes.
        published_params: parameters the paper or reference code reports at 1000 classes and
            224 px (students without distillation tokens), ``None`` when there is no such figure.
        bias: a teacher's inductive bias (``"conv"`` convolution, ``"inv"`` involution), which
            gives its role in ``--token-mode aligned`` (see :mod:`.alignment`); ``None`` for
            students and teachers of neither kind.
    """

    name: str
    kind: ModelKind
    description: str
    fn: Callable[..., nn.Module]
    published_params: int | None = None
    bias: AlignRole | None = None

    @property
    def parameters(self) -> dict[str, inspect.Parameter]:
        """The preset function's keyword parameters, in declaration order."""
        params = inspect.signature(self.fn).parameters
        return {n: p for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}

    @property
    def patch_size(self) -> int | None:
        """Default patch side of a patch-based preset (its ``patch_size`` default), else None."""
        param = self.parameters.get("patch_size")
        return None if param is None else int(param.default)


PRESETS: dict[str, ModelPreset] = {}
"""Every registered preset by name, in registration order (filled as model files import)."""


def register_model(
    name: str,
    *,
    kind: ModelKind,
    description: str,
    published_params: int | None = None,
    bias: AlignRole | None = None,
) -> Callable[[_Fn], _Fn]:
    """Register the decorated function as preset ``name`` and return it unchanged.

    The function takes keyword-only arguments and returns the model body (without
    normalization). Common inputs (``num_classes``, ``in_chans``, ``image_size``,
    ``small_input``) are passed only to presets that name them; see
    :func:`.factory.create_model`.
    """

    def decorate(fn: _Fn) -> _Fn:
        if name in PRESETS:
            # Two files claiming one name would make the winner depend on import order.
            raise ValueError(f"model preset {name!r} is registered twice")
        positional = [
            p.name
            for p in inspect.signature(fn).parameters.values()
            if p.kind is not inspect.Parameter.KEYWORD_ONLY
        ]
        if positional:
            raise TypeError(f"preset {name!r} must take keyword-only arguments, not {positional}")
        PRESETS[name] = ModelPreset(name, kind, description, fn, published_params, bias)
        return fn

    return decorate
