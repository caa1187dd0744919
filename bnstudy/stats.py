"""Means with 95% confidence intervals over seeds (Student's t, from scipy.stats), as every
results table shows them. No torch here."""

from __future__ import annotations

import math
from collections.abc import Iterable

from scipy import stats

LEVEL = 0.95


def mean_ci(values: Iterable[float]) -> tuple[float, float | None, int]:
    """(mean, half-width of its 95% t confidence interval, n); the half-width is None for one
    value, where there is no interval to give."""
    xs = [float(v) for v in values]
    n = len(xs)
    mean = sum(xs) / n
    if n < 2:
        return mean, None, n
    sem = stats.sem(xs)
    if sem == 0:
        return mean, 0.0, n
    low, _ = stats.t.interval(LEVEL, n - 1, loc=mean, scale=sem)
    return mean, mean - low, n


def mean_ci_text(values: Iterable[float]) -> str:
    """`92.00 ± 4.97 (n=3)`: mean ± 95% CI half-width over seeds; one seed is said as such."""
    mean, half, n = mean_ci(values)
    text = ci_text(mean, half)
    return text if half is None else f"{text} (n={n})"


def ci_text(mean: float, half: float | None) -> str:
    """`92.00 ± 4.97`, or `92.00 (1 seed)` where there is no interval (None or NaN)."""
    if half is None or math.isnan(half):
        return f"{mean:.2f} (1 seed)"
    return f"{mean:.2f} ± {half:.2f}"
