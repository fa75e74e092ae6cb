"""``--render-device``: views rendered on the CPU are today's bits, the store records where its
views were rendered, and a replay elsewhere is refused in one line. The CUDA side runs in
``bench/gpu_check.py`` (a GPU is needed to render there)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr
from toy_shards import dump_toy_store, make_toy_shards, make_toy_teacher
from typer.testing import CliRunner

from civt_pipe.cli.app import app
from civt_pipe.pipeline.augment.blocks import iter_blocks, replay, sample_and_render
from civt_pipe.pipeline.augment.config import AugmentConfig, preset
from civt_pipe.pipeline.augment.render_device import resolve_render_device
from civt_pipe.pipeline.data.reader import iter_shard
from civt_pipe.pipeline.data.shard_set import resolve_shards
from civt_pipe.pipeline.runtime.errors import UserError
from civt_pipe.stores.logit_store import LogitStore

CPU = torch.device("cpu")


def test_resolve_render_device_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_render_device("auto", CPU, workers=0) == CPU
    assert resolve_render_device("cpu", CPU, workers=3) == CPU
    # A store replays where it was rendered; one that records nothing was rendered on the CPU.
    assert resolve_render_device("auto", CPU, workers=1, store="s", recorded=None) == CPU
    assert resolve_render_device("cpu", CPU, workers=1, store="s", recorded="cpu") == CPU
    for kwargs, needle in (
        ({"asked": "cuda", "store": "s", "recorded": "cpu"}, "use --render-device auto (or cpu)"),
        ({"asked": "cpu", "store": "s", "recorded": "cuda"}, "use --render-device auto (or cuda)"),
        ({"asked": "auto", "store": "s", "recorded": "tpu"}, "unknown render device 'tpu'"),
        ({"asked": "gpu"}, "--render-device must be one of auto, cpu, cuda"),
    ):
        asked = str(kwargs.pop("asked"))
        with pytest.raises(UserError) as err:
            resolve_render_device(asked, CPU, workers=0, **kwargs)  # type: ignore[arg-type]
        assert needle in str(err.value) and "\n" not in str(err.value)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="needs a CUDA device"):
            resolve_render_device("cuda", CPU, workers=0)
        with pytest.raises(UserError, match="rendered on cuda, which needs a CUDA device"):
            resolve_render_device("auto", CPU, workers=0, store="s", recorded="cuda")
    # With a GPU: auto renders on the model's GPU only without worker processes, and cuda
    # asks for --workers 0 (nothing here touches the GPU, so this runs on any machine).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu = torch.device("cuda", 1)
    assert resolve_render_device("auto", gpu, workers=0) == gpu
    assert resolve_render_device("auto", gpu, workers=2) == CPU
    assert resolve_render_device("cuda", gpu, workers=0) == gpu
    with pytest.raises(UserError, match="use --workers 0 with it"):
        resolve_render_device("cuda", gpu, workers=1)


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("render-device")
    data = make_toy_shards(root, "train", per_class=8)
    teacher = make_toy_teacher(root / "t.pt")
    store = dump_toy_store(data, teacher, root / "auto.zarr", views=2, seed=3)
    return {"root": root, "data": data, "teacher": teacher, "store": store}


def _arrays(path: Path) -> dict[str, bytes]:
    group = zarr.open_group(str(path), mode="r")
    out: dict[str, bytes] = {}

    def walk(g: Any, prefix: str) -> None:
        for name, array in g.arrays():
            out[prefix + name] = np.ascontiguousarray(np.asarray(array[...])).tobytes()
        for name, sub in g.groups():
            walk(sub, f"{prefix}{name}/")

    walk(group, "")
    return out


def test_cpu_rendering_is_todays_and_the_store_records_it(
    toy: dict[str, Any], tmp_path: Path
) -> None:
    auto = LogitStore.open(toy["store"])
    assert auto.user_attrs["render_device"] == "cpu"
    explicit = dump_toy_store(
        toy["data"], toy["teacher"], tmp_path / "cpu.zarr", views=2, seed=3, render_device="cpu"
    )
    assert _arrays(explicit) == _arrays(toy["store"])
    # Rendering on the CPU device passed explicitly gives the bits of the device-less call
    # (the path every store before --render-device took), views and digests alike.
    shard_set = resolve_shards(str(toy["data"]))
    aug: AugmentConfig = preset("small", 8)
    block = next(iter_blocks(iter_shard(shard_set.paths[0], channels=1), aug.mix_block))
    count = shard_set.index.shards[0].num_samples
    before = sample_and_render(block, 3, range(2), count, aug)
    after = sample_and_render(block, 3, range(2), count, aug, device=CPU)
    assert torch.equal(before.views, after.views)
    assert np.array_equal(before.digests, after.digests)
    params = {name: value[:, 1] for name, value in before.params.items()}
    replayed = replay(block, params, aug, CPU)
    assert np.array_equal(replayed.digests, before.digests[:, 1])


def test_a_store_without_the_attribute_replays_on_the_cpu(
    toy: dict[str, Any], tmp_path: Path
) -> None:
    import shutil

    old = tmp_path / "old.zarr"
    shutil.copytree(toy["store"], old)
    _set_recorded(old, None)  # a store dumped before --render-device existed
    code, lines = _train_student(toy, old, tmp_path / "run", "--render-device", "auto")
    assert code == 0, lines


def _set_recorded(store: Path, device: str | None) -> None:
    """Make ``store`` record ``device`` as its render device (None: no record)."""
    group = zarr.open_group(str(store), mode="r+")
    dumped = dict(group.attrs["attrs"])  # type: ignore[arg-type]
    assert dumped["render_device"] == "cpu"
    if device is None:
        del dumped["render_device"]
    else:
        dumped["render_device"] = device
    group.attrs["attrs"] = dumped


def _train_student(
    toy: dict[str, Any], store: Path, out: Path, *extra: str
) -> tuple[int, list[str]]:
    args = ["train-student", "--data", str(toy["data"]), "--store", str(store)]
    args += ["--model", "civt-nano", "--out", str(out), "--epochs", "1", "--batch-size", "8"]
    result = CliRunner().invoke(app, [*args, "--device", "cpu", "--workers", "0", *extra])
    return result.exit_code, result.stderr.splitlines()


@pytest.mark.parametrize("command", ["train-student", "evaluate"])
def test_replaying_on_another_device_is_refused_in_one_line(
    toy: dict[str, Any], tmp_path: Path, command: str
) -> None:
    import shutil

    gpu_store = tmp_path / "gpu.zarr"
    shutil.copytree(toy["store"], gpu_store)
    _set_recorded(gpu_store, "cuda")  # as a dump with --render-device cuda records it
    if command == "train-student":
        code, lines = _train_student(toy, gpu_store, tmp_path / "run", "--render-device", "cpu")
    else:
        args = ["evaluate", "--checkpoint", str(toy["teacher"]), "--data", str(toy["data"])]
        args += ["--store", str(gpu_store), "--device", "cpu", "--render-device", "cpu"]
        result = CliRunner().invoke(app, args)
        code, lines = result.exit_code, result.stderr.splitlines()
    assert code != 0
    assert len(lines) == 1, lines
    assert "was rendered on cuda, but --render-device is cpu" in lines[0]
    assert "--render-device auto (or cuda)" in lines[0]
    assert not (tmp_path / "run").exists()


def test_digests_of_device_views_are_hashed_on_threads_with_the_same_bits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from civt_pipe.pipeline.augment import render

    views = torch.rand(9, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    expected = np.array([render.view_digest(v) for v in views], dtype=np.uint64)
    assert np.array_equal(render.view_digests(views), expected)
    pooled: list[int] = []
    pool = render._digest_pool()
    real_map = pool.map

    def counting_map(fn: Any, rows: Any) -> Any:
        pooled.append(1)
        return real_map(fn, rows)

    monkeypatch.setattr(pool, "map", counting_map)
    assert pooled == [] and np.array_equal(render.view_digests(views), expected)  # CPU: inline

    class OnDevice:  # what a CUDA tensor looks like to view_digests, without a GPU
        device = torch.device("cuda")

        def detach(self) -> OnDevice:
            return self

        def to(self, *args: Any) -> torch.Tensor:
            return views

    assert np.array_equal(render.view_digests(OnDevice()), expected)  # type: ignore[arg-type]
    assert pooled == [1]
