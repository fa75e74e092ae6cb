"""Top-k log-probabilities with lse and the dense target they rebuild (stores/topk.py)."""

from __future__ import annotations

import math

import pytest
import torch

from civt_pipe.stores.topk import TopKLogits, dense_target, leftover_mass, target_entropy


def _logits(shape: tuple[int, ...], scale: float = 3.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(3))


def test_from_logits_keeps_sorted_top_k_log_probabilities_with_full_lse() -> None:
    logits = _logits((6, 2, 12))
    top = TopKLogits.from_logits(logits, 4)
    ref_logp, ref_idx = torch.topk(torch.log_softmax(logits, -1), 4, dim=-1)
    assert top.logprobs.dtype == torch.float16 and top.indices.dtype == torch.int16
    assert torch.equal(top.indices.long(), ref_idx)
    assert torch.allclose(top.logprobs.float(), ref_logp, atol=1e-2)
    assert torch.allclose(top.lse, torch.logsumexp(logits, -1))
    assert (top.logprobs[..., :-1] >= top.logprobs[..., 1:]).all()
    assert (top.logprobs <= 0).all()


def test_values_property_gives_the_raw_logits_in_float32() -> None:
    logits = _logits((6, 12), scale=10.0)
    top = TopKLogits.from_logits(logits, 4)
    assert top.values.dtype == torch.float32
    assert torch.allclose(top.values, torch.topk(logits, 4, dim=-1).values, atol=2e-2)
    with pytest.raises(AttributeError):
        top.values = top.values  # type: ignore[misc]


def test_from_logits_rounds_down_so_leftover_is_never_negative() -> None:
    logits = _logits((200, 50), scale=20.0)
    top = TopKLogits.from_logits(logits, 50)
    ref_logp, _ = torch.topk(torch.log_softmax(logits, -1), 50, dim=-1)
    assert (top.logprobs.float() <= ref_logp).all()
    kept = torch.exp(top.logprobs.double()).sum(-1)
    assert (kept <= 1.0 + 1e-7).all()
    assert (leftover_mass(top.logprobs) >= 0).all()


def test_huge_logits_keep_the_top_class_probability() -> None:
    # An unstable teacher: logits ~1e6 saturated float16 raw logits (max 65504).
    logits = torch.tensor([[1.4e6, 1.4e6 - 2.0, 1.0e6, 3.0, -2.0e5]])
    top = TopKLogits.from_logits(logits, 3)
    probs = torch.softmax(logits.double(), -1)
    assert torch.isfinite(top.logprobs.float()).all()
    assert top.indices[0, :2].tolist() == [0, 1]
    kept = torch.exp(top.logprobs.double())[0]
    assert kept[0].item() == pytest.approx(probs[0, 0].item(), rel=1e-3)
    assert kept[1].item() == pytest.approx(probs[0, 1].item(), rel=1e-3)
    assert top.lse.item() == pytest.approx(1.4e6, rel=1e-6)
    dense = dense_target(top.logprobs, top.indices, 5).double()
    kl = (probs * (probs.clamp(min=1e-300).log() - dense.clamp(min=1e-300).log())).sum(-1)
    assert torch.isfinite(kl).all() and kl.item() < 1e-3


def test_probability_error_at_typical_logits_is_below_a_thousandth() -> None:
    # Logits 20–30: float16 raw logits had a step of 1/64 there (~1.5 % probability error).
    logits = 20.0 + 10.0 * torch.rand(500, 100, generator=torch.Generator().manual_seed(5))
    top = TopKLogits.from_logits(logits, 10)
    probs = torch.softmax(logits.double(), -1).gather(-1, top.indices.long())
    rel = (torch.exp(top.logprobs.double()) - probs).abs() / probs
    # Kept classes carrying meaningful mass: log p ∈ [-2, 0] → float16 step ≤ 2^-10.
    big = probs > math.exp(-2)
    assert big.any()
    assert float(rel[big].max()) < 1e-3


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


def test_shapes_must_agree() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        TopKLogits(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2))
    with pytest.raises(ValueError, match="lse shape"):
        TopKLogits(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3))


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0, 4.0])
def test_dense_target_is_exact_when_k_equals_class_count(tau: float) -> None:
    logits = _logits((5, 8))
    top = TopKLogits.from_logits(logits, 8)
    dense = dense_target(top.logprobs, top.indices, 8, tau)
    # Exact up to the float16 rounding of the stored log-probabilities.
    assert torch.allclose(dense, torch.softmax(logits / tau, -1), atol=2e-3)
    # Exact against the stored (rounded) log-probabilities put back in class order.
    stored = torch.zeros(5, 8, dtype=torch.float64).scatter(
        -1, top.indices.long(), top.logprobs.double()
    )
    assert torch.allclose(dense.double(), torch.softmax(stored / tau, -1), atol=1e-6)
    assert torch.allclose(dense.sum(-1), torch.ones(5), atol=1e-6)


@pytest.mark.parametrize("tau", [0.25, 1.0, 3.0])
def test_dense_target_rows_sum_to_one(tau: float) -> None:
    top = TopKLogits.from_logits(_logits((4, 3, 20)), 5)
    dense = dense_target(top.logprobs, top.indices, 20, tau)
    assert dense.shape == (4, 3, 20)
    assert torch.allclose(dense.sum(-1), torch.ones(4, 3), atol=1e-6)
    assert (dense >= 0).all()


def test_dense_target_at_tau_one_keeps_stored_probabilities_and_spreads_the_rest() -> None:
    logits = _logits((6, 20))
    top = TopKLogits.from_logits(logits, 5)
    dense = dense_target(top.logprobs, top.indices, 20, 1.0)
    idx = top.indices.long()
    # The kept classes get exp(stored logprob) bit for bit (float32).
    assert torch.equal(dense.gather(-1, idx), torch.exp(top.logprobs.double()).float())
    probs = torch.softmax(logits, -1)
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
    dense = dense_target(top.logprobs, top.indices, 4, tau)[0]
    # Completed logits log p: softmax(log p / τ) = p^(1/τ) / Σ p^(1/τ).
    powered = probs.double() ** (1 / tau)
    assert torch.allclose(dense.double(), powered / powered.sum(), atol=2e-3)


def test_dense_target_does_not_depend_on_the_logit_shift() -> None:
    logits = _logits((3, 9))
    a = TopKLogits.from_logits(logits, 4)
    b = TopKLogits.from_logits(logits + 1000.0, 4)
    for tau in (1.0, 3.0):
        da = dense_target(a.logprobs, a.indices, 9, tau)
        db = dense_target(b.logprobs, b.indices, 9, tau)
        assert torch.allclose(da, db, atol=2e-3)


def test_dense_target_rejects_bad_temperature() -> None:
    top = TopKLogits.from_logits(_logits((1, 4)), 2)
    with pytest.raises(ValueError, match="temperature"):
        dense_target(top.logprobs, top.indices, 4, 0.0)


def test_entropy_and_leftover_match_the_dense_target() -> None:
    top = TopKLogits.from_logits(_logits((7, 16)), 4)
    dense = dense_target(top.logprobs, top.indices, 16, 1.0).double()
    expected = -(dense * dense.clamp(min=1e-300).log()).sum(-1)
    assert torch.allclose(target_entropy(top.logprobs, 16), expected, atol=1e-5)
    idx = top.indices.long()
    assert torch.allclose(leftover_mass(top.logprobs), 1 - dense.gather(-1, idx).sum(-1))


def test_known_leftover_and_entropy() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.1, 0.1]])
    top = TopKLogits.from_logits(probs.log(), 2)
    assert leftover_mass(top.logprobs).item() == pytest.approx(0.2, abs=1e-3)
    entropy = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.1))
    assert target_entropy(top.logprobs, 4).item() == pytest.approx(entropy, abs=2e-3)


def _assert_same(a: TopKLogits, b: TopKLogits) -> None:
    for part in ("logprobs", "indices", "lse"):
        x, y = getattr(a, part), getattr(b, part)
        assert x.dtype == y.dtype and torch.equal(x, y), part


def test_row_selection_indexes_all_three_parts_alike() -> None:
    top = TopKLogits.from_logits(_logits((6, 3, 10)), 4)  # rows, views, classes
    rows = torch.tensor([4, 0, 4])
    picked = top[rows]
    assert picked.logprobs.shape == (3, 3, 4) and picked.lse.shape == (3, 3)
    assert torch.equal(picked.indices[1], top.indices[0])
    assert torch.equal(picked.lse[2], top.lse[4])
    _assert_same(top[1:3], TopKLogits(top.logprobs[1:3], top.indices[1:3], top.lse[1:3]))
    one = top[5]  # an int drops the row axis, as for a tensor
    assert one.logprobs.shape == (3, 4) and one.lse.shape == (3,)


def test_stack_of_single_rows_rebuilds_the_batch_and_cat_joins_parts() -> None:
    top = TopKLogits.from_logits(_logits((5, 12)), 3)
    _assert_same(TopKLogits.stack([top[i] for i in range(5)]), top)
    _assert_same(TopKLogits.cat([top[:2], top[2:]]), top)
    with pytest.raises(ValueError, match="zero"):
        TopKLogits.stack([])
    with pytest.raises(ValueError, match="zero"):
        TopKLogits.cat([])


def test_to_keeps_dtypes_and_dense_equals_dense_target() -> None:
    top = TopKLogits.from_logits(_logits((4, 9)), 5)
    _assert_same(top.to("cpu"), top)
    for tau in (1.0, 2.5):
        assert torch.equal(top.dense(9, tau), dense_target(top.logprobs, top.indices, 9, tau))
