"""Every preset builds, trains one step, and has the published size; the registry's errors."""

from __future__ import annotations

import inspect
import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from civt_pipe.cli.app import app
from civt_pipe.pipeline.models import registry
from civt_pipe.pipeline.models.factory import (
    accepted_arguments,
    count_parameters,
    create_model,
    get_preset,
    list_models,
    reference_parameter_count,
)
from civt_pipe.pipeline.models.normalize import NormalizedModel
from civt_pipe.pipeline.models.registry import PRESETS, register_model
from civt_pipe.pipeline.runtime.errors import UserError

NANO_SIZE, BIG_SIZE = 16, 32  # small images keep the big presets fast on a shared CPU


def _size(arch: str) -> int:
    return NANO_SIZE if arch.endswith("-nano") else BIG_SIZE


def _backward_ok(model: nn.Module, loss: torch.Tensor) -> None:
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_every_model_file_registers_its_presets_teachers_first() -> None:
    names = list_models()
    assert names == list_models("teacher") + list_models("student")
    assert {"resnet18", "rednet26", "cnn-nano", "inn-nano", "civt-ti", "civt-nano"} <= set(names)
    assert {"resnet10", "mixer-ti", "regnet_y_400mf"} <= set(names)
    for name in names:
        preset = get_preset(name)
        assert preset.name == name and preset.description
        # The preset function lives with its model, at the foot of the model's own file.
        assert preset.fn.__module__ != registry.__name__


SLOW_PRESETS = {"vit-l-16"}  # 304 M parameters: ~12 s to build and step on a CPU


@pytest.mark.parametrize(
    "arch",
    [
        pytest.param(a, marks=pytest.mark.slow) if a in SLOW_PRESETS else a
        for a in list_models("teacher")
    ],
)
def test_teacher_forward_backward_gives_finite_logits(arch: str) -> None:
    size = _size(arch)
    model = create_model(arch, num_classes=3, in_chans=1, image_size=size)
    logits = model(torch.rand(2, 1, size, size))
    assert isinstance(logits, torch.Tensor)
    assert logits.shape == (2, 3)
    assert torch.isfinite(logits).all()
    _backward_ok(model, logits.logsumexp(1).mean())


@pytest.mark.parametrize("arch", list_models("student"))
def test_student_forward_backward_gives_dict_per_head(arch: str) -> None:
    size = _size(arch)
    patch = None if get_preset(arch).patch_size is None else 8
    model = create_model(
        arch, num_classes=4, image_size=size, teacher_names=("cnn", "inn"), patch_size=patch
    )
    out = model(torch.rand(2, 3, size, size))
    assert list(out) == ["cls", "cnn", "inn"]
    assert all(v.shape == (2, 4) and torch.isfinite(v).all() for v in out.values())
    assert out["cnn"] is not out["inn"]
    _backward_ok(model, sum(v.logsumexp(1).mean() for v in out.values()))


@pytest.mark.parametrize("arch", list_models())
def test_every_preset_rejects_an_unknown_argument_by_name(arch: str) -> None:
    with pytest.raises(UserError, match=rf"^{arch} does not take colour_jitter; it takes "):
        create_model(arch, num_classes=3, colour_jitter=0.4)


def _cheap(arch: str, **kwargs: object) -> NormalizedModel:
    """Build on the meta device (no memory, no init) unless the constructor needs values."""
    try:
        with torch.device("meta"):
            return create_model(arch, **kwargs)
    except RuntimeError:  # RegNet computes its widths with tensors
        return create_model(arch, **kwargs)


@pytest.mark.parametrize("arch", list_models())
def test_model_args_rebuild_the_same_model(arch: str) -> None:
    model = _cheap(arch, num_classes=3, image_size=32)
    assert list(model.model_args) == accepted_arguments(arch)
    again = _cheap(arch, **model.model_args)
    assert again.model_args == model.model_args
    shapes = {k: v.shape for k, v in again.state_dict().items()}
    assert shapes == {k: v.shape for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "arch", [name for name in list_models() if get_preset(name).published_params is not None]
)
def test_parameter_counts_match_published_within_2_percent(arch: str) -> None:
    published = get_preset(arch).published_params
    assert published is not None
    assert abs(reference_parameter_count(arch) - published) / published < 0.02


def test_torchvision_presets_have_torchvision_counts_exactly() -> None:
    assert reference_parameter_count("resnet18") == get_preset("resnet18").published_params


def test_civt_ti_with_three_tokens_adds_two_tokens_and_two_heads() -> None:
    with torch.device("meta"):
        base = create_model("civt-ti", num_classes=1000, token_mode="none")
        civt = create_model("civt-ti", num_classes=1000, teacher_names=("cnn", "inn"))
    dim = 192
    # Each extra token: its embedding + its position embedding; each head: dim×1000 + bias.
    extra = 2 * (dim + dim) + 2 * (dim * 1000 + 1000)
    assert count_parameters(civt) == count_parameters(base) + extra


def test_preset_defaults_are_its_function_defaults_and_can_be_overridden() -> None:
    nano = create_model("civt-nano", num_classes=3, image_size=16)
    assert nano.model_args["patch_size"] == 4 == get_preset("civt-nano").patch_size
    assert nano.model_args["drop_path_rate"] == 0.0
    ti = create_model("civt-ti", num_classes=3, image_size=32, patch_size=None)  # None: default
    assert ti.model_args["patch_size"] == 16 and ti.model_args["drop_path_rate"] == 0.1
    wide = create_model("civt-nano", num_classes=3, image_size=16, patch_size=8)
    assert wide.body.pos_embed.shape[1] == 4 + 1 and wide.model_args["patch_size"] == 8
    assert get_preset("resnet10").patch_size is None


def test_small_input_stem_is_chosen_from_image_size_or_forced() -> None:
    small = create_model("resnet18", num_classes=10, image_size=32)
    large = create_model("resnet18", num_classes=10, image_size=224)
    forced = create_model("resnet18", num_classes=10, image_size=32, small_input=False)
    assert small.body.conv1.kernel_size == (3, 3) and small.body.conv1.stride == (1, 1)
    assert isinstance(small.body.maxpool, nn.Identity)
    assert large.body.conv1.kernel_size == (7, 7)
    assert forced.body.conv1.kernel_size == (7, 7) and small.model_args["small_input"]
    assert not forced.model_args["small_input"]
    rednet = create_model("rednet26", num_classes=10, image_size=16)
    assert rednet(torch.rand(2, 3, 16, 16)).shape == (2, 10)
    assert not any(isinstance(m, nn.MaxPool2d) for m in rednet.body.stem)


def test_teacher_model_args_keep_their_recorded_order() -> None:
    # Teacher checkpoints' bytes (and so the digests a logit store records) depend on it.
    model = create_model("cnn-nano", num_classes=10, in_chans=1, image_size=16)
    assert list(model.model_args) == [
        "num_classes",
        "in_chans",
        "image_size",
        "small_input",
        "mean",
        "std",
    ]


def test_model_normalizes_its_input_with_stored_statistics() -> None:
    model = create_model("cnn-nano", num_classes=2, in_chans=1, image_size=8, mean=[0.3], std=[0.2])
    model.eval()
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(model(x), model.body((x - 0.3) / 0.2))
    state = model.state_dict()
    assert state["normalize.mean"].flatten().tolist() == pytest.approx([0.3])
    assert state["normalize.std"].flatten().tolist() == pytest.approx([0.2])


def test_unknown_arch_error_lists_known_names() -> None:
    with pytest.raises(UserError, match=r"unknown architecture 'resnet9'.*rednet26.*civt-ti"):
        create_model("resnet9", num_classes=10)


def test_get_preset_refuses_the_other_kind() -> None:
    with pytest.raises(UserError, match="civt-ti is a student architecture, not a teacher"):
        get_preset("civt-ti", kind="teacher")
    with pytest.raises(UserError, match="rednet26 is a teacher architecture, not a student"):
        get_preset("rednet26", kind="student")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"arch": "civt-ti", "image_size": 30}, "not a multiple of civt-ti's patch size 16"),
        ({"arch": "resnet10", "patch_size": 4}, "resnet10 does not take patch_size"),
        ({"arch": "resnet18", "token_mode": "shared"}, "resnet18 does not take token_mode"),
        ({"arch": "civt-nano", "num_classes": 0}, "num_classes must be at least 1"),
        ({"arch": "civt-nano", "drop_path_rate": 1.0}, r"drop_path_rate must be in \[0, 1\)"),
        ({"arch": "civt-nano", "mean": [0.5, 0.5]}, "2 mean and 3 std values for 3 input"),
        ({"arch": "civt-nano", "token_mode": "both"}, "unknown token mode 'both'"),
        ({"arch": "civt-nano", "teacher_names": ("a", "a")}, "teacher name 'a' is given twice"),
        ({"arch": "civt-nano", "teacher_names": ("cls",)}, "not usable as a head name"),
    ],
)
def test_bad_arguments_are_user_errors(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"num_classes": 10, "image_size": 32, **kwargs}
    arch = str(args.pop("arch"))
    with pytest.raises(UserError, match=message):
        create_model(arch, **args)


def test_num_classes_is_required() -> None:
    with pytest.raises(UserError, match="cnn-nano needs num_classes"):
        create_model("cnn-nano")


def test_register_model_refuses_a_taken_name_and_positional_arguments() -> None:
    def body(*, num_classes: int) -> nn.Module:
        return nn.Linear(1, num_classes)

    with pytest.raises(ValueError, match="'cnn-nano' is registered twice"):
        register_model("cnn-nano", kind="teacher", description="again")(body)

    def positional(num_classes: int) -> nn.Module:
        return nn.Linear(1, num_classes)

    with pytest.raises(TypeError, match="keyword-only"):
        register_model("not-registered", kind="teacher", description="x")(positional)
    assert "not-registered" not in PRESETS
    assert inspect.signature(get_preset("cnn-nano").fn).parameters["num_classes"]


def test_models_command_lists_every_architecture_with_counts_as_json() -> None:
    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    rows = {row["name"]: row for row in payload["models"]}
    assert list(rows) == list_models()
    assert rows["rednet26"]["kind"] == "teacher" and rows["civt-s"]["kind"] == "student"
    assert rows["resnet18"]["params"] == 11_689_512
    assert rows["civt-ti"]["patch_size"] == 16 and rows["resnet10"]["patch_size"] is None
    assert "drop_path_rate" in rows["civt-ti"]["arguments"]
