"""The loss is paper Eq. 5 with the reductions its docstring promises."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from civt_pipe.pipeline.models.factory import create_model
from civt_pipe.pipeline.train.losses import (
    civt_loss,
    distillation_kl,
    hard_distillation_ce,
    soft_cross_entropy,
)


def test_soft_cross_entropy_equals_torch_cross_entropy_on_one_hot_labels() -> None:
    logits = torch.randn(6, 5)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    ours = soft_cross_entropy(logits, F.one_hot(labels, 5).float(), label_smoothing=0.1)
    torch.testing.assert_close(ours, F.cross_entropy(logits, labels, label_smoothing=0.1))


def test_kl_uses_batchmean_and_tau_squared() -> None:
    student = torch.randn(4, 7)
    teacher = torch.randn(4, 7)
    tau = 2.0
    p = F.softmax(teacher / tau, dim=-1)
    expected = F.kl_div(F.log_softmax(student / tau, -1), p, reduction="batchmean") * tau**2
    torch.testing.assert_close(distillation_kl(student, p, tau), expected)
    # batchmean, not mean over elements: the two differ by the class count.
    with pytest.warns(UserWarning, match="batchmean"):  # torch itself warns about "mean"
        per_element = F.kl_div(F.log_softmax(student / tau, -1), p, reduction="mean") * tau**2
    assert not torch.allclose(distillation_kl(student, p, tau), per_element)


def test_kl_is_zero_when_student_matches_teacher_and_ignores_zero_mass() -> None:
    logits = torch.tensor([[2.0, 1.0, -30.0]])
    p = torch.tensor([[0.7, 0.3, 0.0]])
    student = torch.log(torch.tensor([[0.7, 0.3, 1e-30]]))
    assert distillation_kl(student, p, 1.0).abs() < 1e-5
    assert torch.isfinite(distillation_kl(logits, p, 1.0))


def test_civt_loss_sums_weighted_terms() -> None:
    torch.manual_seed(1)
    out = {"cls": torch.randn(3, 4), "cnn": torch.randn(3, 4), "inn": torch.randn(3, 4)}
    y = F.one_hot(torch.tensor([0, 1, 2]), 4).float()
    probs = {"cnn": F.softmax(torch.randn(3, 4), -1), "inn": F.softmax(torch.randn(3, 4), -1)}
    loss = civt_loss(out, y, probs, lambda_cls=0.5, lambdas={"cnn": 2.0}, taus={"inn": 3.0})
    expected = (
        0.5 * soft_cross_entropy(out["cls"], y)
        + 2.0 * distillation_kl(out["cnn"], probs["cnn"], 1.0)
        + 1.0 * distillation_kl(out["inn"], probs["inn"], 3.0)
    )
    torch.testing.assert_close(loss.total, expected)
    assert set(loss.kd) == {"cnn", "inn"}


def test_civt_loss_rejects_teacher_without_student_head() -> None:
    out = {"cls": torch.randn(2, 3)}
    with pytest.raises(ValueError, match="no head for teacher"):
        civt_loss(out, torch.eye(3)[:2], {"cnn": torch.full((2, 3), 1 / 3)})


def test_hard_distillation_is_cross_entropy_to_the_teacher_arg_max() -> None:
    torch.manual_seed(2)
    out = {"cls": torch.randn(4, 5), "cnn": torch.randn(4, 5), "inn": torch.randn(4, 5)}
    y = F.one_hot(torch.tensor([0, 1, 2, 3]), 5).float()
    teacher_logits = torch.randn(4, 5)
    top1 = teacher_logits.argmax(-1)
    targets = {"cnn": top1, "inn": F.softmax(torch.randn(4, 5), -1)}
    loss = civt_loss(out, y, targets, hard={"cnn"}, distill_smoothing=0.1, taus={"inn": 2.0})
    torch.testing.assert_close(
        loss.kd["cnn"], F.cross_entropy(out["cnn"], top1, label_smoothing=0.1)
    )
    torch.testing.assert_close(loss.kd["cnn"], hard_distillation_ce(out["cnn"], top1, 0.1))
    torch.testing.assert_close(loss.kd["inn"], distillation_kl(out["inn"], targets["inn"], 2.0))
    expected = soft_cross_entropy(out["cls"], y) + loss.kd["cnn"] + loss.kd["inn"]
    torch.testing.assert_close(loss.total, expected)
    # The hard term ignores τ: it is the same at any temperature of that teacher.
    again = civt_loss(out, y, targets, hard={"cnn"}, distill_smoothing=0.1, taus={"cnn": 4.0})
    torch.testing.assert_close(again.kd["cnn"], loss.kd["cnn"])


def test_cls_mode_loss_is_ce_plus_every_teachers_kl_on_the_class_head() -> None:
    """Token mode ``cls`` (paper Table 6 "1 token"): no distillation token; the class head
    fits the labels and each teacher, so Eq. 5 becomes CE + Σ_t KL, all on ``z_cls``."""
    torch.manual_seed(3)
    student = create_model(
        "civt-nano",
        num_classes=6,
        in_chans=1,
        image_size=16,
        teacher_names=["cnn", "inn"],
        token_mode="cls",
    ).eval()
    with torch.no_grad():
        out = student(torch.rand(3, 1, 16, 16))
    assert torch.equal(out["cnn"], out["cls"]) and torch.equal(out["inn"], out["cls"])
    y = F.one_hot(torch.tensor([0, 1, 2]), 6).float()
    probs = {"cnn": F.softmax(torch.randn(3, 6), -1), "inn": F.softmax(torch.randn(3, 6), -1)}
    loss = civt_loss(out, y, probs, taus={"inn": 2.0})
    z = out["cls"]
    expected = (
        soft_cross_entropy(z, y)
        + distillation_kl(z, probs["cnn"], 1.0)
        + distillation_kl(z, probs["inn"], 2.0)
    )
    torch.testing.assert_close(loss.total, expected)
