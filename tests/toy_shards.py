"""A tiny learnable shard set for training and evaluation tests: three gray-level classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from civt_pipe.pipeline.data.make_shards import MakeShardsConfig, make_shards

LEVELS = {"dark": 30, "mid": 128, "bright": 225}
"""Mean pixel of each class; the shards list classes alphabetically: bright, dark, mid."""


def make_toy_shards(root: Path, split: str, per_class: int = 16, seed: int = 0) -> Path:
    """Three classes of 8×8 gray images told apart by brightness (learnable in a few steps)."""
    rng = np.random.default_rng(seed)
    folder = root / f"src-{split}"
    for name, level in LEVELS.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(level + rng.normal(0, 12, (8, 8)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / name / f"{i:03d}.png")
    out = root / split
    make_shards(
        MakeShardsConfig(
            source=f"folder:{folder}", out_dir=out, split=split, shard_size=20, format="png"
        )
    )
    return out
