"""Aligned CivT (token inductive-bias alignment), the cls token mode, the headline head."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from toy_shards import LEVELS, make_toy_shards
from typer.testing import CliRunner

from civt_pipe.cli.app import app
from civt_pipe.pipeline.data.shard_set import ShardSet, resolve_shards
from civt_pipe.pipeline.models.alignment import resolve_alignment
from civt_pipe.pipeline.models.checkpoint import make_checkpoint, save_checkpoint
from civt_pipe.pipeline.models.civt_aligned import AlignedCivT
from civt_pipe.pipeline.models.factory import count_parameters, create_model, list_models
from civt_pipe.pipeline.models.heads import inference_head, prediction
from civt_pipe.pipeline.models.registry import PRESETS
from civt_pipe.pipeline.runtime.errors import UserError
from civt_pipe.pipeline.train.validate import evaluate_model

ALIGN = {"cnn": "conv", "inn": "inv"}


def _aligned(
    image_size: int = 16, in_chans: int = 3, num_classes: int = 5, **kwargs: object
) -> nn.Module:
    args: dict[str, object] = {"teacher_names": ("cnn", "inn"), "align": ALIGN, **kwargs}
    return create_model(
        "civt-nano",
        num_classes=num_classes,
        in_chans=in_chans,
        image_size=image_size,
        token_mode="aligned",
        **args,
    )


def test_aligned_outputs_one_head_per_token_and_n_plus_3_tokens() -> None:
    model = _aligned()
    body = model.body
    assert isinstance(body, AlignedCivT)
    assert not hasattr(body, "dist_tokens")  # the teachers' tokens are computed, not learned
    x = torch.rand(2, 3, 16, 16)
    assert body.tokens(model.normalize(x)).shape == (2, 16 + 3, 96)  # 4×4 patches of 4 px
    out = model(x)
    assert list(out) == ["cls", "cnn", "inn"]
    assert all(v.shape == (2, 5) and torch.isfinite(v).all() for v in out.values())
    sum(v.sum() for v in out.values()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_teacher_tokens_are_the_stems_spatial_means_and_patches_their_sum() -> None:
    body = _aligned().body.eval()
    assert isinstance(body, AlignedCivT)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        seq = body.tokens(x) - body.pos_embed
        conv_grid = body.patch_embed.conv(x)  # [B, D, 4, 4]
        inv_grid = body.patch_embed.inv(x)
    torch.testing.assert_close(seq[:, 0], body.cls_token[:, 0].expand(2, -1))
    torch.testing.assert_close(seq[:, 1], conv_grid.mean(dim=(2, 3)))
    torch.testing.assert_close(seq[:, 2], inv_grid.mean(dim=(2, 3)))
    torch.testing.assert_close(seq[:, 3:], (conv_grid + inv_grid).flatten(2).transpose(1, 2))


@pytest.mark.parametrize(
    ("align", "conv_name"), [(ALIGN, "cnn"), ({"cnn": "inv", "inn": "conv"}, "inn")]
)
def test_the_convolution_teachers_head_reads_the_convolution_token(
    align: dict[str, str], conv_name: str
) -> None:
    body = _aligned(align=align).body.eval()
    assert isinstance(body, AlignedCivT)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        features = body.forward_features(x)
        out = body(x)
    inv_name = "inn" if conv_name == "cnn" else "cnn"
    torch.testing.assert_close(out[conv_name], body.head_conv(features[:, 1]))
    torch.testing.assert_close(out[inv_name], body.head_inv(features[:, 2]))
    torch.testing.assert_close(out["cls"], body.head(features[:, 0]))


@pytest.mark.parametrize(
    ("arch", "dim", "total"), [("civt-ti", 192, 7_630_000), ("civt-s", 384, 25_800_000)]
)
def test_parameter_counts_at_224_px_and_1000_classes(arch: str, dim: int, total: int) -> None:
    stems = {192: (870_144, 806_610, 147_648), 384: (1_656_768, 1_593_234, 295_296)}[dim]
    with torch.device("meta"):
        model = create_model(
            arch, num_classes=1000, teacher_names=("cnn", "inn"), token_mode="aligned", align=ALIGN
        )
        plain = create_model(arch, num_classes=1000, token_mode="none")
    body = model.body
    assert isinstance(body, AlignedCivT)
    conv, inv, removed = stems
    assert abs(count_parameters(body.patch_embed.conv) - conv) <= 0.005 * conv
    assert abs(count_parameters(body.patch_embed.inv) - inv) <= 0.005 * inv
    assert count_parameters(plain.body.patch_embed) == removed
    assert abs(count_parameters(model) - total) <= 0.005 * total


def test_aligned_checkpoint_rebuilds_and_its_headline_is_the_mean(tmp_path: Path) -> None:
    shards = make_toy_shards(tmp_path, "test", per_class=4)
    model = _aligned(image_size=8, in_chans=1, num_classes=3)
    assert model.model_args["align"] == ALIGN
    ckpt = tmp_path / "final.pt"
    save_checkpoint(ckpt, make_checkpoint(model, class_names=["bright", "dark", "mid"]))
    result = CliRunner().invoke(
        app, ["evaluate", "--checkpoint", str(ckpt), "--data", str(shards), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert list(report["heads"]) == ["cls", "cnn", "inn", "mean"]
    assert report["top1"] == report["heads"]["mean"]["top1"]


class _MeanIsRight(nn.Module):
    """A student whose ``cls`` head is always wrong and whose mean of heads is always right."""

    inference_head = "mean"

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        # Class order in the toy shards is alphabetical: bright, dark, mid.
        centers = torch.tensor([LEVELS["bright"], LEVELS["dark"], LEVELS["mid"]]) / 255.0
        right = -((x.mean(dim=(1, 2, 3)).unsqueeze(1) - centers.to(x)) ** 2)
        best = nn.functional.one_hot(right.argmax(dim=1), 3).float()
        return {"cls": right - 10 * best, "t": right + 20 * best}


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> ShardSet:
    return resolve_shards(make_toy_shards(tmp_path_factory.mktemp("toy"), "test", per_class=5))


def test_evaluate_model_headlines_the_models_inference_head(toy: ShardSet) -> None:
    result = evaluate_model(_MeanIsRight(), toy, image_size=8, batch_size=8)
    assert result["top1"] == result["heads"]["mean"]["top1"]
    assert result["heads"]["mean"]["top1"] == 1.0 and result["heads"]["cls"]["top1"] == 0.0


def test_inference_head_per_preset() -> None:
    assert inference_head(_aligned()) == "mean"
    kwargs = {"num_classes": 5, "image_size": 16, "teacher_names": ("a", "b")}
    for arch in ("civt-nano", "resnet10"):
        assert inference_head(create_model(arch, **kwargs)) == "cls"
    assert inference_head(create_model("mixer-ti", patch_size=8, **kwargs)) == "cls"
    assert inference_head(create_model("cnn-nano", num_classes=5, image_size=16)) == "cls"


def test_cls_mode_has_no_distillation_token_and_every_teacher_is_the_class_head() -> None:
    model = create_model(
        "civt-nano", num_classes=5, image_size=16, teacher_names=("a", "b"), token_mode="cls"
    )
    body = model.body
    assert body.dist_tokens.numel() == 0 and len(body.dist_heads) == 0
    assert body.tokens(torch.rand(2, 3, 16, 16)).shape[1] == 16 + 1
    out = model(torch.rand(2, 3, 16, 16))
    assert list(out) == ["cls", "a", "b"]
    assert out["a"] is out["cls"] and out["b"] is out["cls"]
    assert torch.equal(prediction(out, "mean"), out["cls"])


@pytest.mark.parametrize("arch", ["resnet10", "mixer-ti"])
def test_single_head_option_of_the_pooled_students(arch: str) -> None:
    patch = {"patch_size": 8} if arch == "mixer-ti" else {}
    model = create_model(
        arch, num_classes=5, image_size=16, teacher_names=("a", "b"), token_mode="cls", **patch
    )
    assert len(model.body.heads.distill) == 0
    out = model(torch.rand(2, 3, 16, 16))
    assert out["a"] is out["cls"] and out["b"] is out["cls"]


def test_every_teacher_preset_declares_its_inductive_bias() -> None:
    biases = {name: PRESETS[name].bias for name in list_models("teacher")}
    # ViT teachers (cross-architecture distillation) have neither bias: aligned refuses them.
    vits = {n for n in biases if n.startswith(("vit-", "deit-"))}
    assert vits and all(biases.pop(n) is None for n in vits)
    assert all(bias in ("conv", "inv") for bias in biases.values()), biases
    assert biases["cnn-nano"] == "conv" and biases["inn-nano"] == "inv"
    assert {biases[n] for n in biases if n.startswith("rednet")} == {"inv"}
    assert {biases[n] for n in biases if n.startswith(("resnet", "regnet"))} == {"conv"}
    assert all(PRESETS[name].bias is None for name in list_models("student"))


def test_resolve_alignment_from_architectures_and_explicit_roles() -> None:
    assert resolve_alignment({"c": "cnn-nano", "i": "rednet26"}, {}) == {"c": "conv", "i": "inv"}
    # --align overrides an architecture's bias, and names a role no arch has.
    two_cnns = {"a": "resnet18", "b": "cnn-nano"}
    assert resolve_alignment(two_cnns, {"b": "inv"}) == {"a": "conv", "b": "inv"}
    assert resolve_alignment({"a": "resnet18", "s": "civt-ti"}, {"s": "inv"})["s"] == "inv"


@pytest.mark.parametrize(
    ("archs", "explicit", "message"),
    [
        (
            {"cnn_a": "cnn-nano", "cnn_b": "resnet18"},
            {},
            "exactly one convolution and one involution teacher; got cnn_a=conv, cnn_b=conv",
        ),
        ({"cnn": "cnn-nano"}, {}, "needs exactly two teachers"),
        ({"a": "cnn-nano", "b": "inn-nano", "c": "rednet26"}, {}, "needs exactly two teachers"),
        ({"a": "cnn-nano", "b": "inn-nano"}, {"z": "inv"}, "unknown teacher 'z'"),
        ({"a": "cnn-nano", "b": "inn-nano"}, {"b": "mlp"}, "--align b=mlp"),
        ({"a": "cnn-nano", "s": "civt-ti"}, {}, "'s' (civt-ti) has no known inductive bias"),
        ({"a": "cnn-nano", "x": "my-net"}, {}, "'x' (my-net) has no known inductive bias"),
    ],
)
def test_resolve_alignment_errors_are_one_line(
    archs: dict[str, str], explicit: dict[str, str], message: str
) -> None:
    with pytest.raises(UserError, match=None) as err:
        resolve_alignment(archs, explicit)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"align": {"cnn": "conv", "inn": "conv"}}, "got cnn=conv, inn=conv"),
        ({"teacher_names": ("cnn",), "align": {"cnn": "conv"}}, "exactly two teachers"),
        ({"align": None}, "teacher 'cnn' has no alignment role"),
        ({"patch_size": 5, "image_size": 15}, "even patch size of at least 2"),
        ({"patch_size": 1}, "squares); got 1"),
    ],
)
def test_aligned_model_bad_input_is_one_user_error(kwargs: dict[str, object], message: str) -> None:
    size = int(kwargs.pop("image_size", 16))  # type: ignore[call-overload]
    with pytest.raises(UserError) as err:
        _aligned(image_size=size, **kwargs)
    assert message in str(err.value)


@pytest.mark.parametrize("arch", ["resnet10", "mixer-ti"])
def test_aligned_needs_a_civt(arch: str) -> None:
    with pytest.raises(UserError, match=f"needs a CivT student.*{arch} has no patch tokens"):
        create_model(
            arch, num_classes=5, image_size=16, teacher_names=("a", "b"), token_mode="aligned"
        )


def test_align_is_only_for_the_aligned_mode() -> None:
    with pytest.raises(UserError, match="align is for token mode 'aligned' only"):
        create_model(
            "civt-nano", num_classes=5, image_size=16, teacher_names=("cnn", "inn"), align=ALIGN
        )
