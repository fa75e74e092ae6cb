"""Explicit key maps from a model zoo's state dict names to one of our presets' names.

A published checkpoint of an architecture we build ourselves (RegNetY from timm/pycls, RedNet
from mmcls/mmpretrain) has our parameters under other names. A :class:`KeyMap` renames every
key by table — whole modules (``stem.conv`` → ``stem.0``) and the modules inside numbered
blocks — and refuses a key it has no place for, naming it. Shapes are then checked against the
preset by the checkpoint loader, like any bare state dict.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from ..runtime.errors import UserError
from .normalize import IMAGENET_MEAN, IMAGENET_STD


def imagenet_eval(source: str, interpolation: str, crop_pct: float = 0.875) -> dict[str, Any]:
    """A source's ImageNet evaluation preprocessing as ``pretrained_cfg`` fields: 224 px centre
    crop of the shorter side resized to ``224 / crop_pct``, ImageNet mean and std."""
    return {
        "source": source,
        "input_size": [3, 224, 224],
        "interpolation": interpolation,
        "crop_pct": crop_pct,
        "crop_mode": "center",
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
    }


@dataclass(frozen=True)
class KeyMap:
    """How one zoo names one family of our presets.

    Args:
        source: the zoo and format, for messages and the teacher's record.
        presets: our presets its files load into.
        marker: a key every file of this source has (and no other format does).
        modules: zoo module path → ours, outside numbered blocks.
        block: pattern of a block's module path; groups ``stage``, ``index`` and ``rest``.
        block_path: our path of block ``index`` of stage ``stage`` (the zoo's numbers).
        block_modules: ``rest`` → our module inside the block.
        eval_config: the source's evaluation preprocessing (``pretrained_cfg`` fields:
            input_size, interpolation, crop_pct, crop_mode, mean, std).
    """

    source: str
    presets: frozenset[str]
    marker: str
    modules: Mapping[str, str]
    block: re.Pattern[str]
    block_path: Callable[[int, int], str]
    block_modules: Mapping[str, str]
    eval_config: Mapping[str, Any] = field(default_factory=dict)

    def recognises(self, state: Mapping[str, Tensor]) -> bool:
        """Whether ``state`` is in this source's format."""
        return self.marker in state

    def rename(self, key: str) -> str | None:
        """Our name for the zoo's ``key``, or None when it has no place in our model."""
        module, _, param = key.rpartition(".")
        if module in self.modules:
            return f"{self.modules[module]}.{param}"
        m = self.block.match(module)
        if m is None or m["rest"] not in self.block_modules:
            return None
        path = self.block_path(int(m["stage"]), int(m["index"]))
        return f"{path}.{self.block_modules[m['rest']]}.{param}"

    def translate(self, state: Mapping[str, Tensor], arch: str, path: object) -> dict[str, Tensor]:
        """``state`` under our names for preset ``arch``; one line naming the first misfit."""
        if arch not in self.presets:
            raise UserError(
                f"{path} holds {self.source} weights, which load into "
                f"{', '.join(sorted(self.presets))}, not {arch}"
            )
        out: dict[str, Tensor] = {}
        for key, value in state.items():
            ours = self.rename(key)
            if ours is None:
                raise UserError(
                    f"{path}: key {key!r} of a {self.source} file has no place in {arch}"
                )
            out[ours] = value
        return out
