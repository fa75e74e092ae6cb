"""Every preset builds, trains one step, and has the published size; the registry's errors."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from civt_pipe.cli.app import app
from civt_pipe.pipeline.models.registry import (
    build_student,
    build_teacher,
    count_parameters,
    get_spec,
    list_models,
    reference_parameter_count,
)
from civt_pipe.pipeline.runtime.errors import UserError

NANO_SIZE, BIG_SIZE = 16, 32  # small images keep the big presets fast on a shared CPU


def _size(arch: str) -> int:
    return NANO_SIZE if arch.endswith("-nano") else BIG_SIZE


def _backward_ok(model: nn.Module, loss: torch.Tensor) -> None:
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("arch", list_models("teacher"))
def test_teacher_forward_backward_gives_finite_logits(arch: str) -> None:
    size = _size(arch)
    model = build_teacher(arch, num_classes=3, in_chans=1, image_size=size)
    logits = model(torch.rand(2, 1, size, size))
    assert isinstance(logits, torch.Tensor)
    assert logits.shape == (2, 3)
    assert torch.isfinite(logits).all()
    _backward_ok(model, logits.logsumexp(1).mean())


@pytest.mark.parametrize("arch", list_models("student"))
def test_student_forward_backward_gives_dict_per_head(arch: str) -> None:
    size = _size(arch)
    patch = None if get_spec(arch).patch_size is None else 8
    model = build_student(
        arch, num_classes=4, image_size=size, teacher_names=("cnn", "inn"), patch_size=patch
    )
    out = model(torch.rand(2, 3, size, size))
    assert list(out) == ["cls", "cnn", "inn"]
    assert all(v.shape == (2, 4) and torch.isfinite(v).all() for v in out.values())
    assert out["cnn"] is not out["inn"]
    _backward_ok(model, sum(v.logsumexp(1).mean() for v in out.values()))


@pytest.mark.parametrize(
    ("arch", "published_millions"),
    [
        ("resnet18", 11.7),
        ("rednet26", 9.2),
        ("rednet50", 15.5),
        ("rednet101", 25.6),
        ("civt-ti", 5.7),  # DeiT-Ti: no distillation token
    ],
)
def test_parameter_counts_match_published_within_2_percent(
    arch: str, published_millions: float
) -> None:
    count = reference_parameter_count(arch)
    assert abs(count / 1e6 - published_millions) / published_millions < 0.02


def test_civt_ti_with_three_tokens_adds_two_tokens_and_two_heads() -> None:
    with torch.device("meta"):
        base = build_student("civt-ti", num_classes=1000, token_mode="none")
        civt = build_student("civt-ti", num_classes=1000, teacher_names=("cnn", "inn"))
    dim = 192
    # Each extra token: its embedding + its position embedding; each head: dim×1000 + bias.
    extra = 2 * (dim + dim) + 2 * (dim * 1000 + 1000)
    assert count_parameters(civt) == count_parameters(base) + extra


def test_small_input_stem_is_chosen_from_image_size_or_forced() -> None:
    small = build_teacher("resnet18", num_classes=10, image_size=32)
    large = build_teacher("resnet18", num_classes=10, image_size=224)
    forced = build_teacher("resnet18", num_classes=10, image_size=32, small_input=False)
    assert small.body.conv1.kernel_size == (3, 3) and small.body.conv1.stride == (1, 1)
    assert isinstance(small.body.maxpool, nn.Identity)
    assert large.body.conv1.kernel_size == (7, 7)
    assert forced.body.conv1.kernel_size == (7, 7) and small.model_args["small_input"]
    assert not forced.model_args["small_input"]
    rednet = build_teacher("rednet26", num_classes=10, image_size=16)
    assert rednet(torch.rand(2, 3, 16, 16)).shape == (2, 10)
    assert not any(isinstance(m, nn.MaxPool2d) for m in rednet.body.stem)


def test_model_normalizes_its_input_with_stored_statistics() -> None:
    model = build_teacher(
        "cnn-nano", num_classes=2, in_chans=1, image_size=8, mean=[0.3], std=[0.2]
    )
    model.eval()
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(model(x), model.body((x - 0.3) / 0.2))
    state = model.state_dict()
    assert state["normalize.mean"].flatten().tolist() == pytest.approx([0.3])
    assert state["normalize.std"].flatten().tolist() == pytest.approx([0.2])


def test_unknown_arch_error_lists_known_names() -> None:
    with pytest.raises(UserError, match=r"unknown architecture 'resnet9'.*rednet26.*civt-ti"):
        get_spec("resnet9")


def test_teacher_and_student_builders_refuse_the_other_kind() -> None:
    with pytest.raises(UserError, match="civt-ti is a student"):
        build_teacher("civt-ti", num_classes=10)
    with pytest.raises(UserError, match="rednet26 is a teacher"):
        build_student("rednet26", num_classes=10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"arch": "civt-ti", "image_size": 30}, "not a multiple of civt-ti's patch size 16"),
        ({"arch": "resnet10", "patch_size": 4}, "resnet10 is not a patch model"),
        ({"arch": "civt-nano", "num_classes": 0}, "num_classes must be at least 1"),
        ({"arch": "civt-nano", "mean": [0.5, 0.5]}, "2 mean and 3 std values for 3 input"),
        ({"arch": "civt-nano", "token_mode": "both"}, "unknown token mode 'both'"),
        ({"arch": "civt-nano", "teacher_names": ("a", "a")}, "teacher name 'a' is given twice"),
        ({"arch": "civt-nano", "teacher_names": ("cls",)}, "not usable as a head name"),
    ],
)
def test_bad_student_arguments_are_user_errors(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"num_classes": 10, "image_size": 32, **kwargs}
    arch = str(args.pop("arch"))
    with pytest.raises(UserError, match=message):
        build_student(arch, **args)  # type: ignore[arg-type]


def test_models_command_lists_every_architecture_with_counts_as_json() -> None:
    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    rows = {row["name"]: row for row in payload["models"]}
    assert list(rows) == list_models()
    assert rows["rednet26"]["kind"] == "teacher" and rows["civt-s"]["kind"] == "student"
    assert rows["resnet18"]["params"] == 11_689_512
