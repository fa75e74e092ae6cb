"""The replay contract: a (seed, view, key) renders the same bits everywhere.

Same tensor and digest in this process, in another Python process, in DataLoader workers, and
from stored parameters alone (arrays written to disk and read back, config from its JSON).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from civt_pipe.pipeline.augment.config import AugmentConfig, deit, small
from civt_pipe.pipeline.augment.params import mix_block_range, sample_block_params
from civt_pipe.pipeline.augment.render import render_block, view_digest, view_digests

SEED = 20240601
SHARD_COUNT = 10
VIEWS = 3
# Two recipes on two channel counts; blocks of 4 so every view is mixed within its block.
CASES: dict[str, tuple[AugmentConfig, int]] = {
    "deit-rgb": (AugmentConfig(**(deit(16).to_dict() | {"mix_block": 4})), 3),
    "small-gray": (AugmentConfig(**(small(16).to_dict() | {"mix_block": 4, "mix_prob": 1.0})), 1),
}


def _key(position: int) -> str:
    return f"sample-{position:04d}"


def _image(position: int, channels: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1000 + position)
    shape = (channels, 12 + position % 5, 14 + position % 3)
    return torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)


def _shard(channels: int) -> tuple[list[str], list[torch.Tensor], list[tuple[int, int]]]:
    images = [_image(p, channels) for p in range(SHARD_COUNT)]
    hws = [(int(im.shape[1]), int(im.shape[2])) for im in images]
    return [_key(p) for p in range(SHARD_COUNT)], images, hws


def shard_params(case: str, view: int) -> dict[str, np.ndarray]:
    cfg, channels = CASES[case]
    keys, _, hws = _shard(channels)
    return sample_block_params(SEED, view, keys, range(SHARD_COUNT), hws, SHARD_COUNT, cfg)


def reference_views(case: str) -> torch.Tensor:
    """All final views of the shard, [VIEWS, SHARD_COUNT, C, S, S], rendered in one go."""
    cfg, channels = CASES[case]
    _, images, _ = _shard(channels)
    positions = list(range(SHARD_COUNT))
    return torch.stack(
        [render_block(images, shard_params(case, v), positions, cfg) for v in range(VIEWS)]
    )


def render_one(case: str, position: int, view: int) -> torch.Tensor:
    """One final view rendered from scratch, knowing only the shard layout: the way a worker
    that owns a single sample (plus its block) would do it."""
    cfg, channels = CASES[case]
    start, end = mix_block_range(position, SHARD_COUNT, cfg.mix_block)
    positions = list(range(start, end))
    images = [_image(p, channels) for p in positions]
    hws = [(int(im.shape[1]), int(im.shape[2])) for im in images]
    keys = [_key(p) for p in positions]
    block = sample_block_params(SEED, view, keys, positions, hws, SHARD_COUNT, cfg)
    return render_block(images, block, positions, cfg)[positions.index(position)]


class ViewDataset(Dataset[tuple[torch.Tensor, str]]):
    """Item i = (position, view) of the test shard; returns the view and its digest (as str,
    since uint64 does not fit a torch int64)."""

    def __init__(self, case: str) -> None:
        self.case = case
        self.items = [(p, v) for v in range(VIEWS) for p in range(SHARD_COUNT)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        position, view = self.items[index]
        tensor = render_one(self.case, position, view)
        return tensor, str(view_digest(tensor))


@pytest.fixture(scope="module")
def references() -> dict[str, torch.Tensor]:
    return {case: reference_views(case) for case in CASES}


@pytest.mark.parametrize("case", sorted(CASES))
def test_views_are_mixed_and_distinct(case: str, references: dict[str, torch.Tensor]) -> None:
    views = references[case]
    params = shard_params(case, 0)
    assert (params["mix_partner"] >= 0).all()
    digests = view_digests(views.flatten(0, 1))
    assert len(set(digests.tolist())) == VIEWS * SHARD_COUNT


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendering_one_sample_alone_matches_the_whole_shard(
    case: str, references: dict[str, torch.Tensor]
) -> None:
    for view in range(VIEWS):
        for position in (0, 5, SHARD_COUNT - 1):
            assert torch.equal(render_one(case, position, view), references[case][view, position])


@pytest.mark.parametrize("case", sorted(CASES))
def test_replay_from_stored_parameters_alone(
    case: str, references: dict[str, torch.Tensor]
) -> None:
    cfg, channels = CASES[case]
    # What stage one stores: the config as JSON and the parameter arrays.
    stored_cfg = json.dumps(cfg.to_dict())
    buffer = io.BytesIO()
    arrays: dict[str, Any] = {
        f"{v}/{name}": arr for v in range(VIEWS) for name, arr in shard_params(case, v).items()
    }
    np.savez(buffer, **arrays)
    del cfg

    buffer.seek(0)
    loaded = np.load(buffer)
    replay_cfg = AugmentConfig.from_dict(json.loads(stored_cfg))
    _, images, _ = _shard(channels)
    for view in range(VIEWS):
        params = {
            name.split("/", 1)[1]: loaded[name]
            for name in loaded.files
            if name.startswith(f"{view}/")
        }
        views = render_block(images, params, list(range(SHARD_COUNT)), replay_cfg)
        assert torch.equal(views, references[case][view])
        np.testing.assert_array_equal(view_digests(views), view_digests(references[case][view]))


@pytest.mark.parametrize(
    "num_workers",
    [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)],
)
def test_dataloader_workers_render_identical_views(
    num_workers: int, references: dict[str, torch.Tensor]
) -> None:
    case = "deit-rgb"
    loader = DataLoader(ViewDataset(case), batch_size=4, num_workers=num_workers)
    tensors: list[torch.Tensor] = []
    digests: list[int] = []
    for batch, batch_digests in loader:
        tensors.append(batch)
        digests.extend(int(d) for d in batch_digests)
    got = torch.cat(tensors).view(VIEWS, SHARD_COUNT, *references[case].shape[2:])
    assert torch.equal(got, references[case])
    expected = view_digests(references[case].flatten(0, 1)).tolist()
    assert digests == expected


_SUBPROCESS = """
import json, sys
import numpy as np, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
import test_augment_replay as t
out = {{}}
for case in t.CASES:
    torch.save(t.reference_views(case), {out!r} + f"/{{case}}.pt")
    for v in range(t.VIEWS):
        np.savez({out!r} + f"/{{case}}-{{v}}.npz", **t.shard_params(case, v))
    out[case] = t.view_digests(t.reference_views(case).flatten(0, 1)).tolist()
print(json.dumps(out))
"""


@pytest.mark.slow
def test_another_process_renders_the_same_bits(
    tmp_path: Path, references: dict[str, torch.Tensor]
) -> None:
    script = _SUBPROCESS.format(tests=str(Path(__file__).parent), out=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300
    )
    digests = json.loads(result.stdout)
    for case in CASES:
        assert torch.equal(torch.load(tmp_path / f"{case}.pt"), references[case])
        assert digests[case] == view_digests(references[case].flatten(0, 1)).tolist()
        for view in range(VIEWS):
            theirs = np.load(tmp_path / f"{case}-{view}.npz")
            for name, ours in shard_params(case, view).items():
                np.testing.assert_array_equal(theirs[name], ours, err_msg=name)
