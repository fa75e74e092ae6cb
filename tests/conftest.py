"""Shared test settings: no progress bars, deterministic torch on a small thread budget."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("CIVT_PIPE_NO_PROGRESS", "1")


@pytest.fixture(autouse=True)
def _deterministic_torch() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def toy_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One trained toy run shared by the test files that only read it (instead of each training
    its own): toy shards (train: 2 tars, 24 samples, 3 classes; test), a one-epoch cnn-nano
    teacher run directory (``teacher``; its ``final.pt`` is ``ckpt``), a store of the train
    shards from it (V = 2, k = 3) and a one-epoch student run (``run``). Tests must not change
    these files (copy them first)."""
    from toy_shards import dump_toy_store, make_toy_shards, train_toy_student

    from civt_pipe.pipeline.stages.teacher.config import TeacherTrainConfig
    from civt_pipe.pipeline.stages.teacher.run import train_teacher

    root = tmp_path_factory.mktemp("toy-world")
    train = make_toy_shards(root, "train", per_class=8)
    test = make_toy_shards(root, "test", per_class=3, seed=1)
    teacher = root / "cnn"
    train_teacher(
        TeacherTrainConfig(
            arch="cnn-nano",
            data=str(train),
            out=str(teacher),
            epochs=1,
            batch_size=8,
            image_size=16,
            workers=0,
            device="cpu",
            threads=1,
        )
    )
    store = dump_toy_store(train, teacher, root / "store.zarr", views=2, aug="small")
    run = train_toy_student(train, store, root / "run")
    return {
        "root": root,
        "train": train,
        "test": test,
        "teacher": teacher,
        "ckpt": teacher / "final.pt",
        "store": store,
        "run": run,
    }
