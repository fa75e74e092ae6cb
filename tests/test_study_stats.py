"""The study's paired statistics (pipeline/workflows/study/stats.py) on known inputs with
known intervals: Student-t quantiles from published tables, hand-computed means, standard
deviations and 95 % intervals, sign counts, and "separated" only when the interval excludes 0."""

from __future__ import annotations

import math

import pytest

from civt_pipe.pipeline.workflows.study.stats import format_paired, paired, t_quantile


@pytest.mark.parametrize(
    ("df", "quantile"),
    # t(0.975, df) from any printed t table (to the digits such tables give).
    [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423)],
)
def test_t_quantiles_match_the_printed_table(df: int, quantile: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(quantile, abs=5e-5)


def test_t_quantile_refuses_what_has_no_quantile() -> None:
    with pytest.raises(ValueError, match="degree"):
        t_quantile(0.975, 0)
    with pytest.raises(ValueError, match="probability"):
        t_quantile(1.0, 3)


def test_three_seeds_that_all_improve_are_not_separated_when_they_spread() -> None:
    # differences 1, 2, 3: mean 2, sd 1, half-width t(0.975, 2) / sqrt(3) = 2.4841
    found = paired([61.0, 62.0, 63.0], [60.0, 60.0, 60.0])
    assert found.differences == (1.0, 2.0, 3.0)
    assert (found.mean, found.std, found.n) == (2.0, 1.0, 3)
    assert found.low == pytest.approx(2.0 - 2.4841377, abs=1e-6)
    assert found.high == pytest.approx(2.0 + 2.4841377, abs=1e-6)
    assert (found.better, found.worse, found.ties) == (3, 0, 0)
    assert not found.separated  # 3 of 3 up, but the interval [-0.48, 4.48] holds 0


def test_five_tight_differences_are_separated_whatever_the_means_spread() -> None:
    # The reference spreads over 20 points; the differences 2, 3, 4, 3, 3 barely move:
    # mean 3, sd sqrt(0.5), half-width 2.7764451 * 0.7071068 / sqrt(5) = 0.8779890.
    reference = [50.0, 70.0, 60.0, 55.0, 65.0]
    found = paired([r + d for r, d in zip(reference, [2, 3, 4, 3, 3], strict=True)], reference)
    assert found.mean == pytest.approx(3.0)
    assert found.std == pytest.approx(math.sqrt(0.5))
    assert (found.low, found.high) == (
        pytest.approx(3.0 - 0.8779890, abs=1e-6),
        pytest.approx(3.0 + 0.8779890, abs=1e-6),
    )
    assert found.separated and found.better == 5
    # The same numbers the other way round: separated below 0.
    flipped = paired(reference, [r + d for r, d in zip(reference, [2, 3, 4, 3, 3], strict=True)])
    assert flipped.separated and flipped.high == pytest.approx(-3.0 + 0.8779890, abs=1e-6)
    assert (flipped.better, flipped.worse) == (0, 5)


def test_one_seed_or_equal_rows_give_no_claim() -> None:
    one = paired([70.0], [60.0])
    assert (one.mean, one.std, one.low, one.high) == (10.0, 0.0, None, None)
    assert not one.separated
    same = paired([60.0, 61.0], [60.0, 61.0])
    assert (same.low, same.high, same.ties) == (0.0, 0.0, 2)
    assert not same.separated  # an interval of exactly [0, 0] does not exclude 0


def test_paired_needs_one_reference_per_value() -> None:
    with pytest.raises(ValueError, match="one reference each"):
        paired([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="no values"):
        paired([], [])


def test_the_dict_and_text_forms_carry_the_interval_and_the_sign_count() -> None:
    found = paired([62.0, 63.0, 64.0, 63.0, 63.0], [60.0] * 5)
    as_dict = found.to_dict()
    assert as_dict["separated"] is True and as_dict["differences"] == [2.0, 3.0, 4.0, 3.0, 3.0]
    assert format_paired(found) == "+3.00 [+2.12, +3.88], 5/5 up ✓"
    assert format_paired(as_dict) == format_paired(found)
    assert format_paired(paired([1.0], [2.0])) == "-1.00, 0/1 up"
