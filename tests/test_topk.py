"""Top-k logits with lse and the dense target they rebuild (stores/topk.py)."""

from __future__ import annotations

import math

import pytest
import torch

from civt_pipe.stores.topk import TopKLogits, dense_target, leftover_mass, target_entropy


def _logits(shape: tuple[int, ...], scale: float = 3.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(3))


def test_from_logits_keeps_sorted_top_k_with_full_lse() -> None:
    logits = _logits((6, 2, 12))
    top = TopKLogits.from_logits(logits, 4)
    ref_vals, ref_idx = torch.topk(logits, 4, dim=-1)
    assert top.values.dtype == torch.float16 and top.indices.dtype == torch.int16
    assert torch.equal(top.indices.long(), ref_idx)
    assert torch.allclose(top.values.float(), ref_vals, atol=1e-2)
    assert torch.allclose(top.lse, torch.logsumexp(logits, -1))
    assert (top.values[..., :-1] >= top.values[..., 1:]).all()


def test_from_logits_rounds_down_so_leftover_is_never_negative() -> None:
    logits = _logits((200, 50), scale=20.0)
    top = TopKLogits.from_logits(logits, 50)
    ref_vals, _ = torch.topk(logits, 50, dim=-1)
    assert (top.values.float() <= ref_vals).all()
    assert (top.lse >= top.values[..., 0].float()).all()
    kept = torch.exp(top.values.double() - top.lse.double().unsqueeze(-1)).sum(-1)
    assert (kept <= 1.0 + 1e-12).all()


def test_from_logits_uses_int32_ids_above_int16_range() -> None:
    top = TopKLogits.from_logits(_logits((1, 32768)), 2)
    assert top.indices.dtype == torch.int32
    assert int(top.indices[0, 0]) == int(_logits((1, 32768)).argmax())


@pytest.mark.parametrize("k", [0, 11])
def test_from_logits_rejects_k_outside_class_count(k: int) -> None:
    with pytest.raises(ValueError, match="class count 10"):
        TopKLogits.from_logits(_logits((2, 10)), k)


def test_from_logits_rejects_non_finite_logits() -> None:
    logits = _logits((2, 10))
    logits[1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        TopKLogits.from_logits(logits, 3)


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0, 4.0])
def test_dense_target_is_exact_when_k_equals_class_count(tau: float) -> None:
    logits = _logits((5, 8))
    top = TopKLogits.from_logits(logits, 8)
    dense = dense_target(top.values, top.indices, top.lse, 8, tau)
    # Exact up to the float16 rounding of the stored logits.
    assert torch.allclose(dense, torch.softmax(logits / tau, -1), atol=2e-3)
    # Exact against the stored (rounded) logits put back in class order.
    stored = torch.zeros(5, 8, dtype=torch.float64).scatter(
        -1, top.indices.long(), top.values.double()
    )
    assert torch.allclose(dense.double(), torch.softmax(stored / tau, -1), atol=1e-6)


@pytest.mark.parametrize("tau", [0.25, 1.0, 3.0])
def test_dense_target_rows_sum_to_one(tau: float) -> None:
    top = TopKLogits.from_logits(_logits((4, 3, 20)), 5)
    dense = dense_target(top.values, top.indices, top.lse, 20, tau)
    assert dense.shape == (4, 3, 20)
    assert torch.allclose(dense.sum(-1), torch.ones(4, 3), atol=1e-6)
    assert (dense >= 0).all()


def test_dense_target_at_tau_one_matches_softmax_on_kept_classes_and_spreads_the_rest() -> None:
    logits = _logits((6, 20))
    top = TopKLogits.from_logits(logits, 5)
    dense = dense_target(top.values, top.indices, top.lse, 20, 1.0)
    probs = torch.softmax(logits, -1)
    idx = top.indices.long()
    assert torch.allclose(dense.gather(-1, idx), probs.gather(-1, idx), atol=2e-3)
    tail = 1 - probs.gather(-1, idx).sum(-1)
    others = torch.ones_like(dense, dtype=torch.bool).scatter(-1, idx, False)
    expected = (tail / 15).unsqueeze(-1).expand(-1, 20)[others]
    assert torch.allclose(dense[others], expected, atol=2e-3)


def test_dense_target_at_other_tau_uses_the_flat_tail_logit() -> None:
    # Known distribution: top-2 probabilities 0.5 and 0.3, tail 0.2 over 2 other classes.
    probs = torch.tensor([0.5, 0.3, 0.1, 0.1])
    top = TopKLogits.from_logits(probs.log().unsqueeze(0), 2)
    tau = 2.0
    dense = dense_target(top.values, top.indices, top.lse, 4, tau)[0]
    # Completed logits log p: softmax(log p / τ) = p^(1/τ) / Σ p^(1/τ).
    powered = probs.double() ** (1 / tau)
    assert torch.allclose(dense.double(), powered / powered.sum(), atol=2e-3)


def test_dense_target_rejects_bad_temperature() -> None:
    top = TopKLogits.from_logits(_logits((1, 4)), 2)
    with pytest.raises(ValueError, match="temperature"):
        dense_target(top.values, top.indices, top.lse, 4, 0.0)


def test_entropy_and_leftover_match_the_dense_target() -> None:
    top = TopKLogits.from_logits(_logits((7, 16)), 4)
    dense = dense_target(top.values, top.indices, top.lse, 16, 1.0).double()
    expected = -(dense * dense.clamp(min=1e-300).log()).sum(-1)
    assert torch.allclose(target_entropy(top.values, top.lse, 16), expected, atol=1e-5)
    idx = top.indices.long()
    assert torch.allclose(leftover_mass(top.values, top.lse), 1 - dense.gather(-1, idx).sum(-1))


def test_known_leftover_and_entropy() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.1, 0.1]])
    top = TopKLogits.from_logits(probs.log(), 2)
    assert leftover_mass(top.values, top.lse).item() == pytest.approx(0.2, abs=1e-3)
    entropy = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.1))
    assert target_entropy(top.values, top.lse, 4).item() == pytest.approx(entropy, abs=2e-3)
