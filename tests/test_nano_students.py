"""The Table-3 students at civt-nano's scale: ``resnet10-nano`` and ``mixer-nano``.

Each builds with the head options of its full-size preset, has a pinned size, and trains from a
store (toy shards, 8 px, one untrained cnn-nano teacher).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from toy_shards import dump_toy_store, make_toy_shards, make_toy_teacher

from civt_pipe.pipeline.models.factory import count_parameters, create_model, get_preset
from civt_pipe.pipeline.runtime.errors import UserError
from civt_pipe.pipeline.stages.student.config import StudentTrainConfig
from civt_pipe.pipeline.stages.student.run import train_student

# At 16 px, 1 channel, 10 classes, no teacher (civt-nano: 675,562); a change is deliberate.
PARAMS = {"resnet10-nano": 692_050, "mixer-nano": 459_946}
NANO = sorted(PARAMS)


@pytest.mark.parametrize("arch", NANO)
def test_nano_student_size_is_pinned(arch: str) -> None:
    assert get_preset(arch).kind == "student"
    model = create_model(arch, num_classes=10, in_chans=1, image_size=16)
    assert count_parameters(model) == PARAMS[arch]


@pytest.mark.parametrize("arch", NANO)
@pytest.mark.parametrize(
    ("token_mode", "heads", "distinct"),
    [("per-teacher", ["cls", "cnn", "inn"], 3), ("cls", ["cls", "cnn", "inn"], 1)],
)
def test_nano_student_heads_follow_the_token_mode(
    arch: str, token_mode: str, heads: list[str], distinct: int
) -> None:
    model = create_model(
        arch,
        num_classes=10,
        in_chans=1,
        image_size=16,
        teacher_names=("cnn", "inn"),
        token_mode=token_mode,
    )
    out = model(torch.rand(2, 1, 16, 16))
    assert list(out) == heads and all(v.shape == (2, 10) for v in out.values())
    assert len({id(v) for v in out.values()}) == distinct  # "cls": one head serves all


@pytest.mark.parametrize("arch", NANO)
def test_nano_student_refuses_aligned_tokens(arch: str) -> None:
    with pytest.raises(UserError, match="needs a CivT student"):
        create_model(
            arch, num_classes=10, image_size=16, teacher_names=("a", "b"), token_mode="aligned"
        )


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("nano")
    data = make_toy_shards(root, "train")
    teacher = make_toy_teacher(root / "cnn.pt")
    return data, dump_toy_store(data, teacher, root / "store.zarr", views=1, threads=1)


@pytest.mark.parametrize("arch", NANO)
def test_nano_student_trains_from_a_store(
    arch: str, toy_store: tuple[Path, Path], tmp_path: Path
) -> None:
    data, store = toy_store
    summary = train_student(
        StudentTrainConfig(
            data=str(data),
            store=str(store),
            out=str(tmp_path / "run"),
            model=arch,
            epochs=1,
            batch_size=48,
            warmup_epochs=0,
            device="cpu",
            threads=1,
            progress=False,
        )
    )
    assert summary["steps"] == 1 and summary["teachers"] == ["cnn"]
    assert all(torch.isfinite(torch.tensor(v)) for v in summary["loss"].values())
