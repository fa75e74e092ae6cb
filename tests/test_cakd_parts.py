"""Cross-architecture distillation's parts: feature taps, PCA/GL projectors, adversary, views."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn

from civt_pipe.pipeline.cakd.adversary import (
    DISCRIMINATOR_EVERY,
    TRANSFORMS,
    Discriminator,
    MultiViewConfig,
    discriminator_loss,
    generator_loss,
    multi_view,
)
from civt_pipe.pipeline.cakd.features import (
    StudentTap,
    TeacherFeatures,
    ViTFeatureTap,
    standardized,
)
from civt_pipe.pipeline.cakd.projectors import (
    GLProjector,
    PCAProjector,
    attention_map,
    gl_loss,
    partial_replace,
    replacement_mask,
    resize_to_grid,
    value_relation,
)
from civt_pipe.pipeline.models.factory import create_model
from civt_pipe.pipeline.runtime.errors import UserError

# --------------------------------------------------------------------------------- teacher taps


@pytest.mark.parametrize(
    ("arch", "size", "grid", "dim", "heads"),
    [("vit-nano", 16, 4, 96, 3), ("deit-ti", 32, 2, 192, 3)],  # vit-b-16: the test below
)
def test_teacher_tap_gives_patch_tokens_and_qkv_of_the_block(
    arch: str, size: int, grid: int, dim: int, heads: int
) -> None:
    teacher = create_model(arch, num_classes=5, in_chans=1, image_size=size)
    tap = ViTFeatureTap(teacher, block=1)
    x = torch.rand(2, 1, size, size)
    feats = tap(x)
    n = grid * grid
    assert tap.grid == (grid, grid) and tap.dim == dim and tap.num_heads == heads
    assert feats.tokens.shape == feats.q.shape == feats.k.shape == feats.v.shape == (2, n, dim)
    torch.testing.assert_close(feats.logits, teacher(x))
    assert not feats.tokens.requires_grad and not teacher.training


def test_teacher_tap_tokens_are_the_blocks_output_without_the_class_token() -> None:
    teacher = create_model("vit-nano", num_classes=3, in_chans=1, image_size=16)
    x = torch.rand(2, 1, 16, 16)
    feats = ViTFeatureTap(teacher, block=-1)(x)
    vit = teacher.body.vit
    with torch.no_grad():
        expected = vit.blocks(vit.tokens(teacher.normalize(x)))[:, 1:]
    torch.testing.assert_close(feats.tokens, expected)


def test_teacher_qkv_rebuild_our_attention_output() -> None:
    teacher = create_model("vit-nano", num_classes=3, in_chans=1, image_size=16)
    tap = ViTFeatureTap(teacher, block=0)
    block = teacher.body.vit.blocks[0]
    seen: dict[str, torch.Tensor] = {}
    block.norm1.register_forward_hook(lambda _m, _a, out: seen.update(inp=out))
    block.attn.register_forward_hook(lambda _m, _a, out: seen.update(out=out))
    feats = tap(torch.rand(2, 1, 16, 16))
    # Recompute the attention over all tokens (class token included) from the same layout
    # the tap uses (heads concatenated): it must give the block's own attention output.
    q, k, v = block.attn.qkv(seen["inp"]).chunk(3, dim=-1)
    torch.testing.assert_close(feats.q, q[:, 1:])
    torch.testing.assert_close(feats.v, v[:, 1:])
    heads = tap.num_heads
    probs = attention_map(q, k, heads)
    b, n, d = v.shape
    mixed = (probs @ v.view(b, n, heads, d // heads).transpose(1, 2)).transpose(1, 2)
    with torch.no_grad():
        rebuilt = block.attn.proj(mixed.reshape(b, n, d))
    torch.testing.assert_close(rebuilt, seen["out"], atol=1e-5, rtol=1e-4)


def test_teacher_qkv_of_torchvision_vit_match_its_attention_weights() -> None:
    teacher = create_model("vit-b-16", num_classes=3, in_chans=3, image_size=64)
    tap = ViTFeatureTap(teacher, block=0)
    x = torch.rand(2, 3, 64, 64)
    feats = tap(x)
    assert tap.grid == (4, 4) and tap.dim == 768 and tap.num_heads == 12
    assert feats.tokens.shape == feats.v.shape == (2, 16, 768) and feats.logits.shape == (2, 3)
    layer = teacher.body.encoder.layers[0]
    seen: dict[str, torch.Tensor] = {}
    layer.ln_1.register_forward_hook(lambda _m, _a, out: seen.update(inp=out))
    with torch.no_grad():
        teacher(x)
        _, weights = layer.self_attention(
            seen["inp"], seen["inp"], seen["inp"], need_weights=True, average_attn_weights=False
        )
    # With the class token (1 prefix) the attention is over 17 tokens; ours over the 16 patches:
    # recompute with the class token's q/k to compare like with like.
    full = F.linear(
        seen["inp"], layer.self_attention.in_proj_weight, layer.self_attention.in_proj_bias
    )
    q, k, _ = full.chunk(3, dim=-1)
    torch.testing.assert_close(attention_map(q, k, 12), weights, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(feats.q, q[:, 1:])


def test_vit_nano_checkpoint_loads_through_a_teacher_spec_and_taps(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from civt_pipe.pipeline.models.checkpoint import make_checkpoint, save_checkpoint
    from civt_pipe.pipeline.models.teacher_spec import TeacherSpec
    from civt_pipe.pipeline.models.teachers import load_teachers

    model = create_model("vit-nano", num_classes=3, in_chans=1, image_size=16)
    save_checkpoint(tmp_path / "vit.pt", make_checkpoint(model))
    spec = TeacherSpec.parse(f"vit=vit-nano:{tmp_path / 'vit.pt'}")
    (loaded,) = load_teachers([spec], torch.device("cpu"), num_classes=3, channels=1)
    x = torch.rand(2, 1, 16, 16)
    feats = ViTFeatureTap(loaded.model)(x)
    with torch.no_grad():
        torch.testing.assert_close(feats.logits, model.eval()(x))
    assert feats.tokens.shape == (2, 16, 96)


def test_torchvision_vit_needs_a_multiple_of_its_patch() -> None:
    with pytest.raises(
        UserError, match="image size 40 is not a multiple of vit-b-16's patch size 16"
    ):
        create_model("vit-b-16", num_classes=3, image_size=40)


@pytest.mark.slow  # a 350 MB weight file written and read back
def test_torchvision_vit_loads_a_bare_torchvision_weight_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from civt_pipe.pipeline.models.checkpoint import model_from_checkpoint

    reference = tvm.vit_b_16(weights=None, image_size=32, num_classes=4).eval()
    path = tmp_path / "vit_b_16.pth"
    torch.save(reference.state_dict(), path)
    model, meta = model_from_checkpoint(path, arch="vit-b-16", image_size=32)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(model.normalize(x)))
    assert meta["num_classes"] == 4 and meta["image_size"] == 32


def test_non_vit_teacher_is_one_line_user_error() -> None:
    teacher = create_model("cnn-nano", num_classes=3, in_chans=1, image_size=16)
    with pytest.raises(UserError, match=r"^teacher cnn-nano is not a vision transformer") as err:
        ViTFeatureTap(teacher)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("block", [6, -7])
def test_block_out_of_range_is_one_line_naming_the_range(block: int) -> None:
    teacher = create_model("vit-nano", num_classes=3, in_chans=1, image_size=16)
    with pytest.raises(UserError, match=r"has 6 blocks \(valid: -6\.\.5\)$") as err:
        ViTFeatureTap(teacher, block=block)
    assert "\n" not in str(err.value) and f"block {block} " in str(err.value)


# --------------------------------------------------------------------------------- student taps


@pytest.mark.parametrize(
    ("arch", "size", "channels", "grid"),
    [("cnn-nano", 16, 96, 4), ("resnet18", 16, 512, 2), ("mobilenet-v2", 16, 1280, 2)],
)
def test_student_tap_finds_the_last_feature_map_and_keeps_gradients(
    arch: str, size: int, channels: int, grid: int
) -> None:
    student = create_model(arch, num_classes=5, in_chans=1, image_size=size)
    tap = StudentTap(student, in_chans=1, image_size=size)
    assert tap.channels == channels and tap.grid == (grid, grid)
    feature_map, logits = tap(torch.rand(3, 1, size, size))
    assert feature_map.shape == (3, channels, grid, grid) and logits.shape == (3, 5)
    feature_map.sum().backward()
    assert student.body.parameters().__next__().grad is not None


@pytest.mark.parametrize(
    ("arch", "size", "grid", "layer", "channels", "resized"),
    [
        # 224 px, a 16-px-patch ViT (14 x 14): the paper's stride-16 map, no resizing.
        ("resnet18", 224, 14, "body.layer3", 256, False),
        ("resnet50", 224, 14, "body.layer3", 1024, False),
        ("mobilenet-v2", 224, 14, "body.features.13", 96, False),
        # 32 px (CIFAR stems), a 4-px-patch ViT (8 x 8): the stage on that grid.
        ("resnet18", 32, 8, "body.layer3", 256, False),
        ("resnet50", 32, 8, "body.layer3", 1024, False),
        ("mobilenet-v2", 32, 8, "body.features.13", 96, False),
        # 32 px, a 16-px-patch ViT (2 x 2): no layer has it; the last map, to be resized.
        ("resnet18", 32, 2, "body.layer4", 512, True),
        ("resnet50", 32, 2, "body.layer4", 2048, True),
        ("mobilenet-v2", 32, 2, "body.features", 1280, True),
    ],
)
def test_student_layer_rule_takes_the_stage_on_the_teachers_grid(
    arch: str, size: int, grid: int, layer: str, channels: int, resized: bool
) -> None:
    student = create_model(arch, num_classes=5, in_chans=3, image_size=size)
    tap = StudentTap(student, in_chans=3, image_size=size, grid=(grid, grid))
    assert (tap.module_name, tap.channels, tap.resized) == (layer, channels, resized)
    assert (tap.grid == (grid, grid)) is not resized
    feature_map, _ = tap(torch.rand(1, 3, size, size))
    assert feature_map.shape == (1, channels, *tap.grid)


def test_student_layer_by_name_and_a_wrong_name_is_one_line() -> None:
    student = create_model("resnet18", num_classes=5, in_chans=1, image_size=32)
    tap = StudentTap(student, in_chans=1, image_size=32, grid=(8, 8), layer="body.layer2")
    assert tap.module_name == "body.layer2" and tap.grid == (16, 16) and tap.channels == 128
    with pytest.raises(UserError, match=r"^--student-layer body.fc is not a module") as err:
        StudentTap(student, in_chans=1, image_size=32, layer="body.fc")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("arch", ["civt-nano", "mixer-ti"])
def test_student_without_spatial_map_is_one_line_user_error(arch: str) -> None:
    student = create_model(arch, num_classes=3, in_chans=1, image_size=16, patch_size=4)
    with pytest.raises(UserError, match=rf"^student {arch} has no spatial feature map") as err:
        StudentTap(student, in_chans=1, image_size=16)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------------- projectors


def _teacher_feats(b: int, n: int, d: int, c: int = 10) -> TeacherFeatures:
    return TeacherFeatures(
        tokens=torch.randn(b, n, d),
        q=torch.randn(b, n, d),
        k=torch.randn(b, n, d),
        v=torch.randn(b, n, d),
        logits=torch.randn(b, c),
    )


@pytest.mark.parametrize(
    ("c", "hw", "grid", "d", "heads"),
    [(16, (4, 4), (4, 4), 24, 3), (32, (8, 8), (4, 4), 48, 4), (8, (2, 3), (7, 7), 12, 2)],
)
def test_projector_shapes_for_larger_smaller_and_equal_grids(
    c: int, hw: tuple[int, int], grid: tuple[int, int], d: int, heads: int
) -> None:
    b, n = 2, grid[0] * grid[1]
    h_s = torch.randn(b, c, *hw, requires_grad=True)
    pca = PCAProjector(c, d, heads, grid)
    q, k, v = pca.project(h_s)
    assert q.shape == k.shape == v.shape == (b, n, d)
    loss = pca(h_s, _teacher_feats(b, n, d)).total
    assert loss.shape == () and torch.isfinite(loss)
    gl = GLProjector(c, d, grid)
    projected = gl(h_s)
    assert projected.shape == (b, n, d)
    (loss + gl_loss(projected, torch.randn(b, n, d))).backward()
    assert h_s.grad is not None and h_s.grad.abs().sum() > 0


def test_resize_pools_a_larger_map_and_interpolates_a_smaller_one() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    torch.testing.assert_close(resize_to_grid(x, (2, 2)), F.avg_pool2d(x, 2))
    assert resize_to_grid(x, (4, 4)) is x
    up = resize_to_grid(torch.ones(1, 2, 2, 2), (5, 5))
    torch.testing.assert_close(up, torch.ones(1, 2, 5, 5))


def test_replacement_rate_is_one_half_and_the_mask_changes_every_step() -> None:
    shape = torch.Size((64, 16, 32))
    masks = [replacement_mask(shape, 0.5, device=torch.device("cpu")) for _ in range(20)]
    rates = [m.float().mean().item() for m in masks]
    assert all(abs(r - 0.5) <= 0.02 for r in rates)
    assert all(not torch.equal(a, b) for a, b in itertools.pairwise(masks))
    student, teacher = torch.zeros(shape), torch.ones(shape)
    mixed = partial_replace(student, teacher, 0.5)
    assert set(mixed.unique().tolist()) == {0.0, 1.0}
    assert abs(mixed.mean().item() - 0.5) <= 0.02


def test_pca_replaces_only_in_training_and_equals_the_formula_in_eval() -> None:
    b, n, d, heads = 2, 16, 24, 3
    pca = PCAProjector(8, d, heads, (4, 4))
    h_s, teacher = torch.randn(b, 8, 4, 4), _teacher_feats(b, n, d)
    pca.eval()
    q, k, v = pca.project(h_s)

    def per_head(x: torch.Tensor) -> torch.Tensor:  # [B, N, D] → [B, heads, N, d]
        return x.view(b, n, heads, d // heads).transpose(1, 2)

    def attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        scores = per_head(q) @ per_head(k).transpose(-2, -1) / math.sqrt(d // heads)
        return torch.softmax(scores, -1) @ per_head(v)  # Eqs. 2-3: softmax times V

    # Each token's squared error summed over its d outputs, averaged over batch, heads, tokens.
    expected_attn = (attn(q, k, v) - attn(teacher.q, teacher.k, teacher.v)).pow(2).sum(-1).mean()
    expected_value = F.mse_loss(value_relation(v, heads), value_relation(teacher.v, heads))
    losses = pca(h_s, teacher)
    torch.testing.assert_close(losses.attn, expected_attn)
    torch.testing.assert_close(losses.value, expected_value)
    torch.testing.assert_close(losses.total, expected_attn + expected_value)
    torch.testing.assert_close(pca(h_s, teacher).total, losses.total)  # no mask in eval
    pca.train()
    assert not torch.equal(pca(h_s, teacher).total, pca(h_s, teacher).total)  # new mask a step
    # With the teacher's own projections everywhere, the loss is zero.
    full = PCAProjector(8, d, heads, (4, 4), replace_p=1.0).train()
    assert full(h_s, teacher).total.item() == pytest.approx(0.0, abs=1e-7)


def _pca_gradients(side: int, dim: int, heads: int, channels: int) -> tuple[float, float]:
    """The norms of the attention term's and the value term's gradients on the student map
    ``h_S``, for standardized teacher features of a random block, in one training step."""
    torch.manual_seed(0)
    n = side * side
    tokens = torch.randn(4, n, dim)
    wq, wk, wv = (torch.randn(dim, dim) / math.sqrt(dim) for _ in range(3))
    feats = standardized(
        TeacherFeatures(
            tokens=tokens, q=tokens @ wq, k=tokens @ wk, v=tokens @ wv, logits=torch.zeros(4, 3)
        )
    )
    pca = PCAProjector(channels, dim, heads, (side, side)).train()
    h_s = torch.randn(4, channels, side, side, requires_grad=True)
    losses = pca(h_s, feats)
    (g_attn,) = torch.autograd.grad(losses.attn, h_s, retain_graph=True)
    (g_value,) = torch.autograd.grad(losses.value, h_s)
    return g_attn.norm().item(), g_value.norm().item()


@pytest.mark.parametrize(("side", "dim", "heads", "channels"), [(4, 96, 3, 96), (14, 192, 3, 64)])
def test_attention_term_reaches_the_student_map_within_ten_times_the_value_term(
    side: int, dim: int, heads: int, channels: int
) -> None:
    # Before Eqs. 2-3's V and the per-token reduction, the attention term's gradient on h_S was
    # 200x (N = 16) to 27,000x (N = 196) smaller than the value term's: it did nothing.
    g_attn, g_value = _pca_gradients(side, dim, heads, channels)
    assert g_attn > 0 and g_value > 0
    assert 0.1 <= g_attn / g_value <= 10


def test_value_relation_scales_by_root_head_width() -> None:
    v = torch.ones(1, 2, 8)  # two heads of width 4
    torch.testing.assert_close(value_relation(v, 2), torch.full((1, 2, 2, 2), 4 / math.sqrt(4)))


def test_gl_shares_weights_within_a_tile_and_not_across_tiles() -> None:
    gl = GLProjector(6, 5, (8, 8), group=4, dropout=0.0).eval()
    tiles = gl.tile_index()
    assert gl.weight.shape[0] == 4 and tiles.tolist()[:8] == [0, 0, 0, 0, 1, 1, 1, 1]
    h_s = torch.randn(2, 6, 8, 8)
    before = gl(h_s)
    # Each position's output is its own tile's FC layer applied to its own features.
    tokens = h_s.flatten(2).transpose(1, 2)
    manual = torch.einsum("bnc,ncd->bnd", tokens, gl.weight[tiles]) + gl.bias[tiles]
    torch.testing.assert_close(before, manual)
    with torch.no_grad():
        gl.weight[2] += 1.0
    changed = (gl(h_s) - before).abs().amax(dim=(0, 2)) > 0
    assert torch.equal(changed, tiles == 2)


def test_gl_ceil_divides_a_grid_that_is_not_a_multiple_of_the_tile() -> None:
    gl = GLProjector(4, 3, (14, 14), dropout=0.0)  # ViT-B/16 at 224 px: the paper's 16 layers
    assert gl.weight.shape[0] == 16 and gl.tile_index().bincount().tolist()[:4] == [16, 16, 16, 8]
    gl5 = GLProjector(4, 3, (5, 6), dropout=0.0).eval()
    h_s = torch.randn(1, 4, 5, 6)
    tiles = gl5.tile_index()
    manual = (
        torch.einsum("bnc,ncd->bnd", h_s.flatten(2).transpose(1, 2), gl5.weight[tiles])
        + gl5.bias[tiles]
    )
    torch.testing.assert_close(gl5(h_s), manual)


# ------------------------------------------------------------------------------------ adversary


def test_discriminator_losses_on_a_hand_made_case() -> None:
    disc = Discriminator(2, hidden=(3, 3))
    last = disc.net[-1]
    assert isinstance(last, nn.Linear)
    with torch.no_grad():
        for p in disc.parameters():
            p.zero_()
        last.bias.fill_(math.log(3.0))  # D(anything) = sigmoid(log 3) = 3/4
    teacher, student = torch.randn(2, 4, 2), torch.randn(2, 4, 2)
    torch.testing.assert_close(disc(teacher), torch.full((2, 4), 0.75))
    mad = discriminator_loss(disc, teacher, student)
    assert mad.item() == pytest.approx(-math.log(0.75) - math.log(0.25))
    assert generator_loss(disc, student).item() == pytest.approx(math.log(0.25))


def test_discriminator_loss_trains_only_the_discriminator() -> None:
    disc = Discriminator(4)
    student = torch.randn(2, 3, 4, requires_grad=True)
    discriminator_loss(disc, torch.randn(2, 3, 4), student).backward()
    assert student.grad is None
    generator_loss(disc, student).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert DISCRIMINATOR_EVERY == 5


def test_multi_view_with_p_zero_is_identity() -> None:
    x = torch.rand(8, 3, 16, 16)
    out = multi_view(x, MultiViewConfig(p=0.0), torch.Generator().manual_seed(0))
    assert torch.equal(out, x)


def test_multi_view_with_p_one_changes_every_sample_and_is_seeded() -> None:
    x = torch.rand(40, 3, 16, 16) * 0.8 + 0.1
    cfg = MultiViewConfig(p=1.0)
    out = multi_view(x, cfg, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert ((out - x).abs().flatten(1).amax(1) > 0).all()
    again = multi_view(x, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_each_transform_changes_a_gray_batch(name: str) -> None:
    x = torch.rand(4, 1, 16, 16) * 0.8 + 0.1
    out = TRANSFORMS[name](x, MultiViewConfig(), torch.Generator().manual_seed(2))
    assert out.shape == x.shape
    assert ((out - x).abs().flatten(1).amax(1) > 0).all()


def test_vit_teachers_train_with_adamw_recipes_not_the_cnn_ones() -> None:
    from civt_pipe.pipeline.stages.teacher.config import recipe_family
    from civt_pipe.pipeline.train.recipes import TEACHER_RECIPES as RECIPES

    assert recipe_family("vit-nano") == "vit-nano" and recipe_family("deit-ti") == "vit"
    assert recipe_family("vit-b-16") == "vit" and recipe_family("cnn-nano") == "nano"
    assert recipe_family("mobilenet-v2") == recipe_family("efficientnet-b0") == "resnet"
    assert RECIPES["vit"].optimizer == RECIPES["vit-nano"].optimizer == "adamw"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: MultiViewConfig(p=1.5), "multi-view p must be in"),
        (lambda: MultiViewConfig(crop_scale=(0.0, 1.0)), "multi-view crop scale"),
        (lambda: MultiViewConfig(mask_patch=0), "multi-view mask patch"),
        (lambda: PCAProjector(4, 6, 2, (2, 2), replace_p=-0.1), "replacement probability"),
        (lambda: GLProjector(4, 6, (2, 2), group=0), "tile side must be at least 1"),
        (lambda: Discriminator(4, hidden=(8,)), "give two hidden widths"),
    ],
)
def test_option_values_out_of_range_are_user_errors(build: object, message: str) -> None:
    assert callable(build)
    with pytest.raises(UserError, match=message):
        build()


def test_standardized_targets_have_unit_scale_per_token_and_keep_the_attention() -> None:
    g = torch.Generator().manual_seed(0)
    raw = [torch.randn(2, 16, 32, generator=g) * 40 + 7 for _ in range(4)]
    feats = TeacherFeatures(tokens=raw[0], q=raw[1], k=raw[2], v=raw[3], logits=torch.zeros(2, 3))
    out = standardized(feats)
    for t in (out.tokens, out.v):
        assert torch.allclose(t.mean(-1), torch.zeros(2, 16), atol=1e-5)
        assert torch.allclose(t.var(-1, unbiased=False), torch.ones(2, 16), atol=1e-3)
    assert out.q is feats.q and out.k is feats.k and out.logits is feats.logits
