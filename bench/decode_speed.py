"""Decode speed: PIL vs torchvision.io on ImageNet-sized JPEGs (and PNGs), images/s on one core.

The images are made here: structured pictures of 256–500 px per side (:func:`synthetic_image`
of the make-shards bench: gradients, shapes, soft texture), encoded as JPEG (quality 90, 4:2:0,
as most photographs) and as PNG. Each image is decoded to uint8 RGB through the project's one
decoder function, ``decode_image_bytes(data, 3, decoder)``, so the figures include the
conversion to a ``[3, H, W]`` tensor that the reader needs either way. The two decoders
alternate over ``--repeats`` passes and the median pass is reported (a shared machine drifts),
with the count of images whose pixels differ between them. Torch runs single-threaded.

    python bench/decode_speed.py --images 40 --repeats 3
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_shards_speed import synthetic_image

from civt_pipe.pipeline.data.imageio import Decoder, decode_image_bytes

DECODERS: tuple[Decoder, ...] = ("pil", "torchvision")


def encoded_images(count: int, fmt: str, *, seed: int = 0) -> list[bytes]:
    """``count`` synthetic pictures of 256–500 px per side, encoded as ``fmt`` (JPEG or PNG)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        height, width = (int(v) for v in rng.integers(256, 501, 2))
        buffer = io.BytesIO()
        options: dict[str, Any] = {"quality": 90, "subsampling": 2} if fmt == "JPEG" else {}
        Image.fromarray(synthetic_image(rng, height, width)).save(buffer, fmt, **options)
        out.append(buffer.getvalue())
    return out


def _pass_seconds(datas: Sequence[bytes], decoder: Decoder) -> float:
    start = time.perf_counter()
    for data in datas:
        decode_image_bytes(data, 3, decoder)
    return time.perf_counter() - start


def decode_speed(images: int = 40, repeats: int = 3, seed: int = 0) -> dict[str, Any]:
    """Images/s of each decoder on JPEG and PNG, their ratio, and the pixel agreement."""
    torch.set_num_threads(1)
    result: dict[str, Any] = {"images": images, "repeats": repeats, "threads": 1}
    for fmt in ("JPEG", "PNG"):
        datas = encoded_images(images, fmt, seed=seed)
        for decoder in DECODERS:
            _pass_seconds(datas[:2], decoder)  # warm-up: imports, first allocations
        seconds: dict[str, list[float]] = {d: [] for d in DECODERS}
        for _ in range(repeats):
            for decoder in DECODERS:
                seconds[decoder].append(_pass_seconds(datas, decoder))
        speed = {d: images / statistics.median(s) for d, s in seconds.items()}
        differing = sum(
            not torch.equal(decode_image_bytes(d, 3, "pil"), decode_image_bytes(d, 3))
            for d in datas
        )
        result[fmt.lower()] = {
            "mean_bytes": round(sum(len(d) for d in datas) / images),
            "pil_images_per_s": round(speed["pil"], 1),
            "torchvision_images_per_s": round(speed["torchvision"], 1),
            "torchvision_vs_pil": round(speed["torchvision"] / speed["pil"], 3),
            "images_with_different_pixels": int(differing),
        }
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(json.dumps(decode_speed(args.images, args.repeats, args.seed), indent=2))


if __name__ == "__main__":
    main()
