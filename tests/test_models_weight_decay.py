"""Which parameters each preset decays: pinned per preset, named by the models' own hooks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from civt_pipe.pipeline.models.factory import create_model, list_models
from civt_pipe.pipeline.models.normalize import NormalizedModel
from civt_pipe.pipeline.train.schedule import no_weight_decay_names, param_groups

# (preset, token mode) -> (decayed tensors, decayed elements, undecayed tensors, undecayed
# elements) at 10 classes, 32 px, teachers ("cnn", "inn"). Recorded with the name-suffix rule
# this hook replaced; the behaviour pins' training runs depend on the split staying the same.
SPLITS: dict[tuple[str, str], tuple[int, int, int, int]] = {
    ("resnet18", "per-teacher"): (21, 11164352, 41, 9610),
    ("resnet34", "per-teacher"): (37, 21265088, 73, 17034),
    ("resnet50", "per-teacher"): (54, 23467712, 107, 53130),
    ("regnet_y_400mf", "per-teacher"): (86, 3875184, 139, 32370),
    ("regnet_y_800mf", "per-teacher"): (76, 5619328, 123, 36034),
    ("rednet26", "per-teacher"): (41, 7167792, 90, 36864),
    ("rednet38", "per-teacher"): (57, 10306672, 126, 51804),
    ("rednet50", "per-teacher"): (73, 13445552, 162, 66744),
    ("rednet101", "per-teacher"): (141, 23489968, 315, 134472),
    ("cnn-nano", "per-teacher"): (16, 217888, 31, 1802),
    ("inn-nano", "per-teacher"): (22, 41568, 49, 2142),
    ("civt-ti", "per-teacher"): (52, 5461632, 105, 32478),
    ("civt-s", "per-teacher"): (52, 21540096, 105, 64926),
    ("civt-nano", "per-teacher"): (28, 671040, 57, 14526),
    ("resnet10", "per-teacher"): (15, 4907712, 27, 5790),
    ("mixer-ti", "per-teacher"): (52, 3701376, 102, 22542),
    ("civt-nano", "shared"): (27, 670080, 56, 14324),
    ("civt-nano", "none"): (26, 669120, 55, 14122),
    ("regnety-600mf", "per-teacher"): (81, 5416864, 131, 35386),
    ("regnety-4gf", "per-teacher"): (116, 19494368, 187, 74178),
    # The zoo presets of issue 23, recorded when they came (same hooks as their families).
    ("rednet152", "per-teacher"): (209, 31761840, 468, 194232),
    ("regnety-16gf", "per-teacher"): (96, 80449792, 155, 145598),
    # cls mode has no distillation token: the same split as "none".
    ("civt-nano", "cls"): (26, 669120, 55, 14122),
    # aligned: the stems' convolutions decay, their BN parameters and biases do not.
    ("civt-nano", "aligned"): (36, 818416, 72, 15104),
    ("resnet10", "cls"): (13, 4897472, 25, 5770),
    ("mixer-ti", "cls"): (50, 3697536, 100, 22522),
    # The Table 3 students at civt-nano's scale: weights decay, norms and biases do not.
    ("resnet10-nano", "per-teacher"): (15, 694152, 27, 2190),
    ("resnet10-nano", "cls"): (13, 690312, 25, 2170),
    ("mixer-nano", "per-teacher"): (28, 486720, 54, 6174),
    ("mixer-nano", "cls"): (26, 484800, 52, 6154),
    # ViT teachers name their class token and position embedding (torchvision's: class_token,
    # encoder.pos_embedding); CAKD's CNN students decay their convolutions and linears.
    ("vit-nano", "per-teacher"): (26, 669120, 54, 14122),
    ("deit-ti", "per-teacher"): (50, 5457792, 102, 31690),
    ("deit-s", "per-teacher"): (50, 21532416, 102, 63370),
    ("vit-b-16", "per-teacher"): (50, 85532160, 102, 126730),
    ("vit-l-16", "per-teacher"): (98, 302786560, 198, 328714),
    ("mobilenet-v2", "per-teacher"): (53, 2202560, 105, 34122),
    ("efficientnet-b0", "per-teacher"): (82, 3968992, 131, 51366),
}


def _build(arch: str, token_mode: str) -> NormalizedModel:
    kwargs: dict[str, object] = {"num_classes": 10, "image_size": 32}
    if arch in list_models("student"):
        kwargs.update(teacher_names=("cnn", "inn"), token_mode=token_mode)
        if token_mode == "aligned":
            kwargs.update(align={"cnn": "conv", "inn": "inv"})
    try:
        with torch.device("meta"):
            return create_model(arch, **kwargs)
    except RuntimeError:  # RegNet computes its widths with tensors
        return create_model(arch, **kwargs)


def test_every_preset_has_a_pinned_split() -> None:
    assert {arch for arch, _ in SPLITS} == set(list_models())


@pytest.mark.parametrize(("arch", "token_mode"), list(SPLITS))
def test_weight_decay_split_is_unchanged(arch: str, token_mode: str) -> None:
    groups = param_groups(_build(arch, token_mode), weight_decay=0.05)
    decayed = [p for g in groups if g["weight_decay"] > 0 for p in g["params"]]
    undecayed = [p for g in groups if g["weight_decay"] == 0 for p in g["params"]]
    split = (
        len(decayed),
        sum(p.numel() for p in decayed),
        len(undecayed),
        sum(p.numel() for p in undecayed),
    )
    assert split == SPLITS[(arch, token_mode)]


def test_civt_names_its_tokens_and_position_embedding() -> None:
    model = _build("civt-nano", "per-teacher")
    assert model.body.no_weight_decay() == {"pos_embed", "cls_token", "dist_tokens"}
    # The wrapper needs no hook of its own: names are prefixed with the module path.
    assert no_weight_decay_names(model) == {
        "body.pos_embed",
        "body.cls_token",
        "body.dist_tokens",
    }
    assert no_weight_decay_names(_build("mixer-ti", "per-teacher")) == set()


def test_a_hook_naming_no_parameter_of_its_module_is_an_error() -> None:
    class Typo(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))

        def no_weight_decay(self) -> set[str]:
            return {"pos_embed", "pos_embedding"}

    with pytest.raises(ValueError, match=r"Typo\.no_weight_decay\(\) names 'pos_embedding'"):
        no_weight_decay_names(nn.Sequential(Typo()))


def test_named_multi_dimensional_parameters_are_not_decayed() -> None:
    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.queries = nn.Parameter(torch.zeros(1, 4, 8))
            self.proj = nn.Linear(8, 8)

        def no_weight_decay(self) -> set[str]:
            return {"queries"}

    model = Tokens()
    decayed, undecayed = param_groups(model, weight_decay=0.1)
    assert [p.shape for p in decayed["params"]] == [model.proj.weight.shape]
    assert {id(p) for p in undecayed["params"]} == {id(model.queries), id(model.proj.bias)}
