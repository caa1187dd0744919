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


# What every accuracy cell is, said once for titles and notes.
STATISTIC = "mean ± 95% t-CI over the completed seeds (n)"


def mean_ci_text(values: Iterable[float], notes: Iterable[str] = ()) -> str:
    """`92.00 ± 4.97 (n=3)`: mean ± 95% CI half-width over seeds; one seed is said as such,
    `92.00 (1 seed)`; `notes` go inside the parentheses: `75.10 ± 2.00 (n=2; diverged 1/3)`."""
    mean, half, n = mean_ci(values)
    counted = "1 seed" if half is None else f"n={n}"
    value = f"{mean:.2f}" if half is None else f"{mean:.2f} ± {half:.2f}"
    return f"{value} ({'; '.join([counted, *notes])})"


def ci_text(mean: float, half: float | None) -> str:
    """`92.00 ± 4.97`, or `92.00 (1 seed)` where there is no interval (None or NaN)."""
    if half is None or math.isnan(half):
        return f"{mean:.2f} (1 seed)"
    return f"{mean:.2f} ± {half:.2f}"
