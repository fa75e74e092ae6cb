"""The evaluation view: resize and center-crop, no randomness (torch and torchvision only).

It lives with the data, not with the augmentation, because the one evaluation stream
(:func:`.streams.eval_batches`) renders it; :mod:`..augment.render` re-uses :func:`check_image`
and :data:`INTERPOLATION`, so ``augment`` imports ``data`` and never the other way round.
"""

from __future__ import annotations

import math

import torch
import torchvision.transforms.v2.functional as F
from torchvision.transforms import InterpolationMode

EVAL_CROP_PCT = 0.875  # resize to size/0.875 then center-crop (timm/DeiT default)
EVAL_DIRECT_MAX = 32  # at or below this size, resize straight to the output size
INTERPOLATION = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}
"""The interpolation modes an augmentation config may name."""


def check_image(image: torch.Tensor) -> None:
    """Refuse anything but a uint8 ``[C, H, W]`` image with 1 or 3 channels."""
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(
            f"expected a uint8 image [C, H, W] with C = 1 or 3, got {image.dtype} "
            f"{tuple(image.shape)}"
        )


def eval_view(
    image_u8: torch.Tensor,
    image_size: int,
    *,
    interpolation: str = "bilinear",
    device: torch.device | None = None,
) -> torch.Tensor:
    """The evaluation view: float32 `[C, S, S]` in [0, 1], resized and center-cropped, on
    `device` (default: the image's; ``--render-device``).

    Images are resized so the shorter side is `image_size / 0.875` (DeiT's crop_pct) and
    center-cropped; for outputs of 32 px or less the shorter side goes straight to
    `image_size`, since cropping away an eighth of a tiny image loses too much.
    """
    check_image(image_u8)
    if device is not None:
        image_u8 = image_u8.to(device)
    if image_size <= EVAL_DIRECT_MAX:
        resize_to = image_size
    else:
        resize_to = math.floor(image_size / EVAL_CROP_PCT)
    view = F.resize(
        image_u8, [resize_to], interpolation=INTERPOLATION[interpolation], antialias=True
    )
    view = F.center_crop(view, [image_size, image_size])
    return view.to(torch.float32).div_(255.0)
