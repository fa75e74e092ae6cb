"""Student heads: token modes, fixed output structure, inference from cls / mean / a teacher."""

from __future__ import annotations

import pytest
import torch

from civt_pipe.pipeline.models.civt import CivT
from civt_pipe.pipeline.models.factory import create_model
from civt_pipe.pipeline.models.heads import prediction
from civt_pipe.pipeline.runtime.errors import UserError

TEACHERS = ("cnn", "inn", "big")


def _civt(token_mode: str, teachers: tuple[str, ...] = TEACHERS) -> torch.nn.Module:
    return create_model(
        "civt-nano", num_classes=5, image_size=8, teacher_names=teachers, token_mode=token_mode
    )


def test_per_teacher_mode_has_one_token_and_head_per_teacher() -> None:
    model = _civt("per-teacher")
    body = model.body
    assert isinstance(body, CivT)
    assert body.dist_tokens.shape == (1, 3, 96) and len(body.dist_heads) == 3
    assert body.pos_embed.shape[1] == 4 + 4  # 2×2 patches + cls + 3 distillation tokens
    out = model(torch.rand(2, 3, 8, 8))
    assert list(out) == ["cls", *TEACHERS]
    assert not torch.equal(out["cnn"], out["inn"])


def test_deit_is_per_teacher_with_one_teacher() -> None:
    out = _civt("per-teacher", ("regnet",))(torch.rand(2, 3, 8, 8))
    assert list(out) == ["cls", "regnet"]


def test_shared_mode_has_one_token_whose_output_appears_under_every_teacher() -> None:
    model = _civt("shared")
    assert model.body.dist_tokens.shape[1] == 1 and len(model.body.dist_heads) == 1
    out = model(torch.rand(2, 3, 8, 8))
    assert list(out) == ["cls", *TEACHERS]
    assert out["cnn"] is out["inn"] is out["big"]


def test_none_mode_has_only_the_class_head() -> None:
    model = _civt("none")
    assert model.body.dist_tokens.shape[1] == 0
    assert list(model(torch.rand(2, 3, 8, 8))) == ["cls"]


@pytest.mark.parametrize("arch", ["resnet10", "mixer-ti"])
def test_pooled_students_share_the_token_modes(arch: str) -> None:
    kwargs = {"num_classes": 5, "image_size": 16, "teacher_names": ("a", "b")}
    patch = {"patch_size": 8} if arch == "mixer-ti" else {}
    shared = create_model(arch, token_mode="shared", **kwargs, **patch)(torch.rand(2, 3, 16, 16))
    assert shared["a"] is shared["b"]
    none = create_model(arch, token_mode="none", **kwargs, **patch)(torch.rand(2, 3, 16, 16))
    assert list(none) == ["cls"]


def test_output_structure_does_not_depend_on_training_mode() -> None:
    model = _civt("per-teacher")
    x = torch.rand(2, 3, 8, 8)
    train_keys = list(model.train()(x))
    eval_keys = list(model.eval()(x))
    assert train_keys == eval_keys == ["cls", *TEACHERS]


def test_prediction_mean_averages_distinct_heads_once() -> None:
    cls, shared = torch.tensor([[0.0, 3.0]]), torch.tensor([[3.0, 0.0]])
    outputs = {"cls": cls, "a": shared, "b": shared}
    torch.testing.assert_close(prediction(outputs, "mean"), torch.tensor([[1.5, 1.5]]))
    per_teacher = {"cls": cls, "a": shared, "b": shared.clone()}
    torch.testing.assert_close(prediction(per_teacher, "mean"), torch.tensor([[2.0, 1.0]]))
    assert prediction(outputs) is cls
    assert prediction(outputs, "b") is shared
    assert prediction(cls, "mean") is cls  # a teacher's plain logits pass through


def test_prediction_unknown_head_lists_heads() -> None:
    with pytest.raises(UserError, match="unknown head 'x'; this model has: mean, cls, a"):
        prediction({"cls": torch.zeros(1, 2), "a": torch.zeros(1, 2)}, "x")
