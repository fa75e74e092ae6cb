"""RegNetY-600MF and RegNetY-4GF, Co-advise's CNN teachers, built from torchvision's RegNet."""

from __future__ import annotations

import pytest
import torch

from civt_pipe.pipeline.models.factory import create_model, get_preset, reference_parameter_count
from civt_pipe.pipeline.models.torchvision_teachers import REGNET_Y_PARAMS, regnet_stages


@pytest.mark.parametrize(
    ("arch", "millions", "exact"),
    [("regnety-600mf", 6.1, 6_055_160), ("regnety-4gf", 20.6, 20_646_656)],
)
def test_parameter_counts_match_the_published_models(
    arch: str, millions: float, exact: int
) -> None:
    """The paper's rounded figures, and within 0.5 % of pycls/timm's exact counts."""
    count = reference_parameter_count(arch)
    assert round(count / 1e6, 1) == millions
    assert abs(count - exact) <= 0.005 * exact
    assert get_preset(arch).published_params == exact


@pytest.mark.parametrize(
    ("arch", "stages"),
    [
        ("regnety-600mf", ([1, 3, 7, 4], [48, 112, 256, 608], [16, 16, 16, 16])),
        ("regnety-4gf", ([2, 6, 12, 2], [128, 192, 512, 1088], [64, 64, 64, 64])),
    ],
)
def test_stage_widths_are_the_published_ones(
    arch: str, stages: tuple[list[int], list[int], list[int]]
) -> None:
    p = REGNET_Y_PARAMS[arch]
    got = regnet_stages(int(p["depth"]), p["w_0"], p["w_a"], p["w_m"], int(p["group_width"]))
    assert got == stages


def test_regnety_600mf_runs_on_small_grayscale_images() -> None:
    model = create_model("regnety-600mf", num_classes=3, in_chans=1, image_size=16)
    assert model.model_args["small_input"] is True
    logits = model(torch.rand(2, 1, 16, 16))
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    assert get_preset("regnety-600mf").bias == get_preset("regnety-4gf").bias == "conv"
