"""A model zoo's own evaluation view (``evaluate --preprocess zoo``): the pixels timm's
``create_transform(**resolve_data_config({}, model=m))`` gives, so a published checkpoint's
top-1 can be checked on the user's validation shards as its authors measured it.

timm's centre-crop evaluation transform resizes the shorter side to ``floor(size / crop_pct)``
with the model's interpolation, crops the centre ``size × size`` and scales to [0, 1] (the mean
and std are applied by the model itself, see ``models/normalize.py``). It works on PIL images,
whose resampling differs from torch's, so this view does too: same library, same pixels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..runtime.errors import UserError

INTERPOLATIONS: tuple[str, ...] = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")


@dataclass(frozen=True, slots=True)
class ZooEval:
    """The evaluation view of a zoo model's ``pretrained_cfg``.

    Args:
        size: output side (the model's input size).
        crop_pct: fraction of the resized shorter side kept by the centre crop.
        interpolation: PIL resampling (one of :data:`INTERPOLATIONS`).
    """

    size: int
    crop_pct: float
    interpolation: str

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> ZooEval:
        """From ``pretrained_cfg`` fields (``input_size``, ``crop_pct``, ``crop_mode``,
        ``interpolation``); a crop mode other than ``center`` is one line."""
        mode = cfg.get("crop_mode") or "center"
        if mode != "center":
            raise UserError(f"--preprocess zoo reproduces centre crops, not crop mode {mode!r}")
        interpolation = str(cfg.get("interpolation") or "bilinear")
        if interpolation not in INTERPOLATIONS:
            raise UserError(f"--preprocess zoo: unknown interpolation {interpolation!r}")
        size = cfg.get("input_size") or [3, 224, 224]
        if int(size[-1]) != int(size[-2]):
            raise UserError(f"--preprocess zoo takes square input sizes, not {list(size)[1:]}")
        return cls(int(size[-1]), float(cfg.get("crop_pct") or 0.875), interpolation)

    def __call__(self, image_u8: torch.Tensor) -> torch.Tensor:
        """float32 ``[C, size, size]`` in [0, 1] from a uint8 ``[C, H, W]`` image."""
        import torchvision.transforms.functional as TF
        from torchvision.transforms import InterpolationMode

        # A PIL image all the way (torchvision's functions are typed for tensors).
        pil: Any = TF.to_pil_image(image_u8)
        scale = math.floor(self.size / self.crop_pct)
        pil = TF.resize(pil, [scale], interpolation=InterpolationMode(self.interpolation))
        pil = TF.center_crop(pil, [self.size, self.size])
        return TF.to_tensor(pil)
