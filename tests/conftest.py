"""Shared test settings: no progress bars, deterministic torch on a small thread budget, and
the order in which pytest-xdist's workers take the test files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from civt_pipe.pipeline.runtime.openmp import set_openmp_defaults

os.environ.setdefault("CIVT_PIPE_NO_PROGRESS", "1")
# As the CLI does, before torch loads: idle OpenMP threads sleep instead of spinning, so the
# two xdist workers (and the processes tests start) do not steal each other's cores.
set_openmp_defaults()

import torch  # noqa: E402  (after the OpenMP defaults: libgomp reads them when it loads)

XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
"""How many pytest processes share the machine (``pyproject.toml`` asks xdist for one per
core): each gets an equal share of the cores for its torch threads."""

TORCH_THREADS = max(1, min(2, (os.cpu_count() or 1) // XDIST_WORKERS))

LONGEST_FIRST: tuple[str, ...] = (
    "test_quickstart.py",
    "test_docs_commands.py",
    "test_train_teacher.py",
    "test_static_types.py",
    "test_train_student_slow.py",
    "test_precision.py",
    "test_dump_processes.py",
    "test_object_storage.py",
    "test_make_shards_scale.py",
)
"""The files holding the suite's longest tests, longest first (``pytest --durations``: each
file 0.4–3.5 minutes on one core). ``--dist loadscope --no-loadscope-reorder`` hands whole
files to the workers in collection order, each worker taking the next when it is done, so the
longest go first and the workers finish together instead of one starting a 3-minute test last.
Then the other files with tests marked ``slow``, then the rest, each in file order."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order the files as :data:`LONGEST_FIRST` says (within a file the order is unchanged)."""
    slow_files = {item.path.name for item in items if item.get_closest_marker("slow")}

    def rank(item: pytest.Item) -> tuple[int, int]:
        name = item.path.name
        if name in LONGEST_FIRST:
            return 0, LONGEST_FIRST.index(name)
        return (1 if name in slow_files else 2), 0

    items.sort(key=rank)  # stable: file order and test order are kept within a rank


@pytest.fixture(autouse=True)
def _deterministic_torch() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(TORCH_THREADS)


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
