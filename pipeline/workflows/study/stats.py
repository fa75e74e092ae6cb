"""Paired statistics of a study: per-seed differences, their mean and a Student-t interval.

The rows of one seed share the store, the views, the data order and the seed of the initial
weights, so the seed-to-seed spread of two rows' *means* is mostly shared; their per-seed
*differences* cancel it. For paired values ``a_s`` and reference values ``b_s`` over ``n`` seeds:

    d_s  = a_s − b_s
    mean = Σ d_s / n,  sd = sample standard deviation of d (ddof 1)
    95 % interval = mean ± t(0.975, n − 1) · sd / √n

and the sign count says in how many seeds ``a`` was above ``b`` (and below, and equal). A claim
is *separated* only when its interval excludes 0. One seed gives no interval (and no claim).

Pure functions; the t quantile comes from scipy (a dependency of scikit-learn, declared in
pyproject.toml as well).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

LEVEL = 0.95
"""Coverage of every interval the study reports."""


def t_quantile(probability: float, df: int) -> float:
    """The ``probability`` quantile of Student's t with ``df`` degrees of freedom (df ≥ 1)."""
    if df < 1:
        raise ValueError(f"Student t needs at least 1 degree of freedom, got {df}")
    if not 0.0 < probability < 1.0:
        raise ValueError(f"a quantile's probability lies in (0, 1), got {probability}")
    from scipy.stats import t  # deferred: scipy.stats costs ~0.5 s to import

    return float(t.ppf(probability, df))


@dataclass(frozen=True, slots=True)
class Paired:
    """The paired comparison of one row (or point) with its reference, over the same seeds."""

    differences: tuple[float, ...]
    """``value − reference`` per seed, in seed order."""
    mean: float
    std: float
    """Sample standard deviation of the differences (0 for one seed)."""
    n: int
    low: float | None
    """Lower end of the 95 % interval of the mean difference (None for one seed)."""
    high: float | None
    better: int
    """Seeds where the value is above the reference."""
    worse: int
    """Seeds where it is below."""
    ties: int

    @property
    def separated(self) -> bool:
        """Whether the interval excludes 0 (never with one seed)."""
        if self.low is None or self.high is None:
            return False
        return self.low > 0.0 or self.high < 0.0

    def to_dict(self) -> dict[str, Any]:
        """results.json's form: the fields, the differences as a list, and ``separated``."""
        out = asdict(self)
        out["differences"] = list(self.differences)
        out["separated"] = self.separated
        return out


def paired(values: Sequence[float], reference: Sequence[float], level: float = LEVEL) -> Paired:
    """Compare ``values`` with ``reference`` seed by seed (same length, same seed order).

    Raises:
        ValueError: no values, or two sequences of different lengths.
    """
    if len(values) != len(reference):
        raise ValueError(f"paired values need one reference each: {len(values)}, {len(reference)}")
    if not values:
        raise ValueError("paired statistics of no values")
    diffs = tuple(float(a) - float(b) for a, b in zip(values, reference, strict=True))
    n = len(diffs)
    mean = sum(diffs) / n
    std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else 0.0
    low = high = None
    if n > 1:
        half = t_quantile(0.5 + level / 2, n - 1) * std / math.sqrt(n)
        low, high = mean - half, mean + half
    return Paired(
        differences=diffs,
        mean=mean,
        std=std,
        n=n,
        low=low,
        high=high,
        better=sum(d > 0 for d in diffs),
        worse=sum(d < 0 for d in diffs),
        ties=sum(d == 0 for d in diffs),
    )


def format_paired(found: Any, digits: int = 2) -> str:
    """``+1.23 [−0.40, +2.86], 4/5 ✓``: the mean difference, its 95 % interval, the seeds where
    the row is above its reference, and ✓ when separated. Takes :class:`Paired` or its dict."""
    d = found.to_dict() if isinstance(found, Paired) else found
    text = f"{d['mean']:+.{digits}f}"
    if d["low"] is not None and d["high"] is not None:
        text += f" [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}]"
    text += f", {d['better']}/{d['n']} up"
    if d["separated"]:
        text += " ✓"
    return text
