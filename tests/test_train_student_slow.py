"""train-student as real processes: SIGKILL + --resume reaches the same weights; DDP on 2 CPUs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from civt_pipe.cli.app import app
from civt_pipe.pipeline.data.index import ShardIndex
from civt_pipe.pipeline.data.make_shards import MakeShardsConfig, make_shards
from civt_pipe.pipeline.models.checkpoint import make_checkpoint, save_checkpoint
from civt_pipe.pipeline.models.factory import create_model
from civt_pipe.pipeline.stages.dump.run import DumpConfig, TeacherSpec, run_dump
from civt_pipe.pipeline.stages.student.config import StudentTrainConfig
from civt_pipe.pipeline.stages.student.run import train_student

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three 24-sample digit shards and a V=2, k=4 store from two untrained nano teachers."""
    root = tmp_path_factory.mktemp("student-slow")
    make_shards(
        MakeShardsConfig(source="digits", out_dir=root / "all", split="test", shard_size=24)
    )
    index = ShardIndex.load(root / "all")
    train = root / "train"
    train.mkdir()
    names = [s.name for s in index.shards[:3]]
    for name in names:
        (train / name).write_bytes((root / "all" / name).read_bytes())
    index.subset(names).save(train)
    torch.manual_seed(0)
    specs = []
    for name, arch in (("cnn", "cnn-nano"), ("inn", "inn-nano")):
        ckpt = root / f"{name}.pt"
        model = create_model(arch, num_classes=10, in_chans=1, image_size=16)
        save_checkpoint(ckpt, make_checkpoint(model))
        specs.append(TeacherSpec.parse(f"{name}={arch}:{ckpt}"))
    store = root / "store.zarr"
    run_dump(
        DumpConfig(
            data=str(train),
            teachers=tuple(specs),
            out=store,
            views=2,
            topk=4,
            workers=0,
            device="cpu",
            aug="small",
            progress=False,
        )
    )
    return {"root": root, "train": train, "store": store}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(CIVT_PIPE_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    return env


def _args(world: dict[str, Path], out: Path) -> list[str]:
    return [
        "train-student",
        "--data",
        str(world["train"]),
        "--store",
        str(world["store"]),
        "--model",
        "civt-nano",
        "--out",
        str(out),
        "--epochs",
        "4",
        "--batch-size",
        "8",
        "--save-every",
        "2",
        "--device",
        "cpu",
        # One thread in this process and in the killed one alike: the weights are compared bit
        # for bit, and another thread count may sum in another order.
        "--threads",
        "1",
        "--json",
    ]


def _steps_logged(metrics: Path) -> int:
    if not metrics.exists():
        return 0
    steps = [json.loads(x).get("step", 0) for x in metrics.read_text().splitlines() if x.strip()]
    return max(steps, default=0)


def _in_process(args: list[str]) -> dict[str, Any]:
    """One CLI run in this process (CliRunner): only the run that is killed needs a process of its
    own, and each process costs seconds of torch import."""
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def test_sigkill_then_resume_reaches_the_weights_of_an_uninterrupted_run(
    world: dict[str, Path], tmp_path: Path
) -> None:
    expected = _in_process(_args(world, tmp_path / "whole"))
    assert expected["steps"] == 4 * 9

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "civt_pipe.cli", *_args(world, out)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    while _steps_logged(out / "metrics.jsonl") < 13 and proc.poll() is None:
        assert time.monotonic() < deadline, "the run never reached step 13"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert (out / "last.pt").exists() and not (out / "final.pt").exists()

    got = _in_process([*_args(world, out), "--resume"])
    assert got["steps"] == expected["steps"]
    assert got["weights_sha256"] == expected["weights_sha256"]


_DRIVER = """
import json, os, sys
from civt_pipe.pipeline.stages.student.config import StudentTrainConfig
from civt_pipe.pipeline.stages.student.run import train_student
cfg = StudentTrainConfig(**json.loads(sys.argv[1]))
summary = train_student(cfg)
with open(os.path.join(cfg.out, f"rank{os.environ['RANK']}.json"), "w") as fh:
    json.dump(summary, fh)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ddp_on_two_cpu_processes_takes_equal_steps_and_agrees_on_weights(
    world: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "ddp"
    out.mkdir()
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    cfg: dict[str, Any] = dict(
        data=str(world["train"]),
        store=str(world["store"]),
        out=str(out),
        model="civt-nano",
        epochs=2,
        batch_size=16,
        device="cpu",
        progress=False,
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(_free_port()),
            str(driver),
            json.dumps(cfg),
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    # --batch-size is per rank: 2 ranks × 16 = 32 images per optimizer step, so 72 samples
    # // 32 = 2 steps per epoch on both ranks, though the shards split 2:1.
    assert ranks[0]["images_per_step"] == 32
    assert ranks[0]["steps"] == ranks[1]["steps"] == 2 * 2
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    assert (out / "final.pt").exists()
    # The same config in one process trains on other batches (global batch 16, not 32).
    single = train_student(StudentTrainConfig(**{**cfg, "out": str(tmp_path / "one")}))
    assert single["steps"] == 2 * 4 and single["images_per_step"] == 16
