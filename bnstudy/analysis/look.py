"""What every figure shares: one colour, marker and dash per variant, the seeds a figure shows,
the chance level, ✕ marks for diverged runs at the axis, the legend and title, log axes that
keep zeros, and atomic PNG writes.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from bnstudy.analysis.collect import COMPLETED, DIVERGED, VARIANT
from bnstudy.analysis.tables import _natural
from bnstudy.records import (
    BATCH_SIZE,
    MODEL,
    write_atomic,
)


def save(plt, fig, path: Path) -> Path:
    """Write `fig` as a PNG atomically, close it, and return `path`."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    write_atomic(path, buffer.getvalue())
    return path


MARKERS = ("o", "s", "D", "^", "v", "P", "X", "*", "<", ">", "h")


LINESTYLES = ("-", "--", "-.", ":")


def styles(labels: list[str]) -> dict[str, dict]:
    """A colour, marker and line style per label, in order: lines that coincide stay
    distinguishable (hollow markers of different shapes, different dashes, and the earlier
    labels, drawn first, wider and larger around the later ones)."""
    return {
        label: {
            "color": f"C{i % 10}",
            "marker": MARKERS[i % len(MARKERS)],
            "linestyle": LINESTYLES[i % len(LINESTYLES)],
            "markerfacecolor": "none",
            "markersize": max(4.0, 9.0 - 1.5 * i),
            "linewidth": max(1.0, 2.6 - 0.5 * i),
        }
        for i, label in enumerate(labels)
    }


def _chance(dataset: str) -> float | None:
    """Accuracy (%) of guessing: 100 / classes of the dataset (None if not in DATASETS)."""
    from bnstudy.data.datasets import DATASETS  # imports torch: only when figures are drawn

    spec = DATASETS.get(dataset)
    return 100.0 / spec.classes if spec else None


def seeds_text(counts: Iterable[int]) -> str:
    """`1 seed`, `3 seeds`, or `1-3 seeds per point` from the seeds behind each point."""
    counts = list(counts)
    low, high = min(counts, default=0), max(counts, default=0)
    if low == high:
        return f"{low} seed" + ("s" if low != 1 else "")
    return f"{low}-{high} seeds per point"


class SettingFigures:
    """The figures of one setting (`runs`, all models and batch sizes): shared look, title
    and chance level."""

    def __init__(self, plt, runs, style: dict, label: str, chance: float | None) -> None:
        self.plt, self.runs, self.style, self.label, self.chance = plt, runs, style, label, chance
        self.models = sorted(runs[MODEL].unique(), key=_natural)
        self.sizes = sorted(runs[BATCH_SIZE].unique())
        self.done = runs[runs["status"] == COMPLETED]
        self.diverged = runs[runs["status"] == DIVERGED]

    def _variants(self, frame: pd.DataFrame) -> list[str]:
        return [v for v in self.style if v in set(frame[VARIANT])]

    def _chance_line(self, ax) -> None:
        if self.chance is not None:
            ax.axhline(self.chance, color="0.4", linestyle=":", linewidth=1)

    def _legend_label(self, variant: str) -> str:
        """The variant, and how many of its runs in this figure diverged (when any did)."""
        runs = self.runs[self.runs[VARIANT] == variant]
        k = int((runs["status"] == DIVERGED).sum())
        return f"{variant} (✕ diverged {k}/{len(runs)})" if k else variant

    def _crosses(self, ax, x: list, variant: str, counts: list[str], row: int) -> None:
        """Diverged runs as ✕ on the x axis, with `counts` (`2/3`) beside them; the panel's
        `row`-th variant with crosses a little above the one before, so both stay visible."""
        _axis_crosses(ax, x, self.style[variant]["color"], counts, row)

    def _finish(self, fig, variants: list[str], title: str, chance: bool = True) -> None:
        """The title on top and the legend to the right, clear of the panels."""
        fig.suptitle(f"{title}\n{self.label}", fontsize=10)
        fig.tight_layout(rect=(0, 0, 0.8, 1))
        handles = [
            self.plt.Line2D([], [], label=self._legend_label(v), **self.style[v]) for v in variants
        ]
        if chance and self.chance is not None:
            handles.append(
                self.plt.Line2D([], [], color="0.4", linestyle=":", label="chance level")
            )
        fig.legend(handles=handles, loc="center left", bbox_to_anchor=(0.81, 0.5), fontsize=8)


def zero_floor(values: pd.Series) -> float:
    """Where a log axis shows zeros: a decade below the smallest positive value."""
    positive = values[values > 0]
    return float(positive.min()) / 10 if len(positive) else 1e-3


def log_line(ax, x, y, floor: float, **look) -> None:
    """A line on a log axis that keeps its zeros: drawn as ✕ at `floor`, not dropped."""
    y = pd.Series(list(y), dtype=float)
    zero = (y <= 0).to_numpy()
    ax.plot(x, y.where(~zero), **look)
    if zero.any():
        x_zero = [v for v, z in zip(x, zero, strict=True) if z]
        ax.scatter(x_zero, [floor] * len(x_zero), marker="x", color=look["color"], zorder=3)


CROSS_ROW = 0.035  # axes height between the ✕ rows of two variants at the axis


def _axis_crosses(ax, x, color: str, counts: list[str], row: int = 0) -> None:
    """✕ on the x axis itself (below every accuracy) at `x`, in the `row`-th row above it,
    with `counts` (`2/3`) to their right."""
    transform = ax.get_xaxis_transform()  # x in data, y in axes units: 0 is the axis
    y = CROSS_ROW * row
    ax.scatter(list(x), [y] * len(counts), marker="x", s=50, color=color, zorder=4,
               transform=transform, clip_on=False)  # fmt: skip
    for xi, text in zip(x, counts, strict=True):
        ax.annotate(text, (xi, y), xycoords=transform, xytext=(5, -3),
                    textcoords="offset points", fontsize=7, color=color)  # fmt: skip
