"""The paper's figures from collected runs, as PNG files: accuracy curves per epoch, final
accuracy against batch size and a heatmap of the grid, one figure per setting with the models
as panels, and (bnstudy/analysis/layer_figures.py) γ and the signal from layers.csv. Every
figure says how many seeds it shows, draws a spread only where there are several, gives each
variant its own colour, marker and dashes (baseline first), and rounds as the tables do. A
diverged run is never averaged away: it is an ✕ at the axis where it diverged and counted in
the legend, the cell or the title.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import pandas as pd

from bnstudy.analysis.collect import DIVERGED, VARIANT, varies
from bnstudy.analysis.layer_figures import LayerFigures
from bnstudy.analysis.look import SettingFigures, _chance, save, seeds_text, styles
from bnstudy.analysis.stats import mean_ci
from bnstudy.analysis.tables import AXES, PER_CELL, PER_CELL_KEYS, _details, setting_keys
from bnstudy.records import (
    BATCH_SIZE,
    DATASET,
    MODEL,
    SEED,
    WIDTH,
)
from bnstudy.study.controls import variant_order


def plot(
    runs: pd.DataFrame, epochs: pd.DataFrame, out: Path, layers: pd.DataFrame | None = None
) -> list[Path]:
    """Write the figures as PNG into `out`; returns their paths. With `layers` (layers.csv of
    the runs), also γ over training and the signal against depth, per model and batch size."""
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt

    written = []
    style = styles(variant_order(runs[VARIANT]))  # one look per variant in every figure
    # One figure per setting but the model: the models are its panels (as the tables split).
    setting = setting_keys(runs, axes=(MODEL, *AXES))
    varying = [c for c in setting if varies(runs, c)]
    for key, group in runs.groupby(setting, sort=True, dropna=False):
        values = dict(zip(setting, key, strict=True))
        for per_cell in (k for k in PER_CELL_KEYS if k in group and k not in setting):
            values[per_cell] = PER_CELL if varies(group, per_cell) else group[per_cell].iloc[0]
        label = f"{values[DATASET]}, {_details(values, varying)}"
        slug = hashlib.sha256(label.encode()).hexdigest()[:6]
        slug = f"{values[DATASET]}-w{values[WIDTH]}-{slug}"
        figure = AccuracyFigures(plt, group, style, label, _chance(values[DATASET]))
        layer_figure = LayerFigures(plt, group, style, label, _chance(values[DATASET]))
        sub_epochs = epochs.merge(group[["run_id"]], on="run_id") if not epochs.empty else epochs
        for name, draw in (
            ("curves", figure.curves),
            ("final_vs_batch_size", figure.final_vs_batch),
            ("heatmap", figure.heatmap),
        ):
            fig = draw(sub_epochs)
            if fig is not None:
                written.append(save(plt, fig, out / f"{name}-{slug}.png"))
        if layers is None or layers.empty:
            continue
        sub_layers = layers.merge(group[["run_id"]], on="run_id")
        for (model, size), cell in sub_layers.groupby([MODEL, BATCH_SIZE], sort=True):
            for name, draw in (("gamma", layer_figure.gamma), ("signal", layer_figure.signal)):
                fig = draw(cell, f"{model}, batch {size}")
                if fig is not None:
                    written.append(save(plt, fig, out / f"{name}-{model}-bs{size}-{slug}.png"))
    return written


class AccuracyFigures(SettingFigures):
    """A setting's accuracy figures: curves per epoch, final accuracy against batch size, and
    a heatmap of the grid."""

    def curves(self, epochs: pd.DataFrame):
        if epochs.empty and self.diverged.empty:
            return None
        fig, axes = self.plt.subplots(
            len(self.models),
            len(self.sizes),
            figsize=(max(3.6 * len(self.sizes), 5.5) + 1.5, 2.9 * len(self.models) + 0.9),
            squeeze=False,
            sharey=True,
        )
        counts = []
        # A diverged run's epochs before it diverged would drag the mean of the others
        # down, then vanish from it: it is an ✕ at the epoch where it diverged instead.
        diverged = set(self.diverged["run_id"])
        # ✕ marks do not widen the axis (they sit in axis units): every epoch is in view.
        last = max(
            epochs["epoch"].max() if len(epochs) else 1, self.diverged["diverged_epoch"].max()
        )
        last = int(last) if pd.notna(last) else 1
        for (i, model), (j, size) in itertools.product(
            enumerate(self.models), enumerate(self.sizes)
        ):
            ax = axes[i][j]
            cell = epochs[(epochs[MODEL] == model) & (epochs[BATCH_SIZE] == size)]
            cell = cell[~cell["run_id"].isin(diverged)]
            at = self.diverged[
                (self.diverged[MODEL] == model) & (self.diverged[BATCH_SIZE] == size)
            ]
            for row, variant in enumerate(self._variants(at)):
                when = at.loc[at[VARIANT] == variant, "diverged_epoch"].fillna(1).astype(int)
                seeds = self.runs[(self.runs[MODEL] == model) & (self.runs[BATCH_SIZE] == size)]
                n = int((seeds[VARIANT] == variant).sum())
                per_epoch = when.value_counts().sort_index()
                texts = [f"{k}/{n}" for k in per_epoch]
                self._crosses(ax, list(per_epoch.index), variant, texts, row)
            for variant in self._variants(cell):
                curves = cell[cell[VARIANT] == variant]
                stats = curves.groupby("epoch")["test_acc"].agg(["mean", "min", "max"])
                # Markers: a run that diverged after one epoch is still a visible point.
                ax.plot(stats.index, stats["mean"], label=variant, **self.style[variant])
                counts.append(curves[SEED].nunique())
                if counts[-1] > 1:
                    color = self.style[variant]["color"]
                    ax.fill_between(
                        stats.index, stats["min"], stats["max"], color=color, alpha=0.15
                    )
            self._chance_line(ax)
            ax.set_title(f"{model}, batch {size}", fontsize=9)
            ax.set_xlabel("epoch")
            if j == 0:
                ax.set_ylabel("test accuracy (%)")
            ax.grid(alpha=0.3)
            ax.set_xlim(0.75, last + 0.25)
            ax.xaxis.set_major_locator(self.plt.MaxNLocator(nbins=5, integer=True))
        band = ", band: min..max over seeds" if max(counts, default=1) > 1 else ""
        shown = f"mean of {seeds_text(counts)}{band}" if counts else "no run but diverged ones"
        title = f"Test accuracy per epoch ({shown})"
        if len(self.diverged):
            title += "; ✕ at the axis: a run diverged in that epoch"
        self._finish(fig, self._variants(self.runs), title)
        return fig

    def final_vs_batch(self, epochs: pd.DataFrame):
        if self.done.empty and self.diverged.empty:
            return None
        fig, axes = self.plt.subplots(
            1,
            len(self.models),
            figsize=(max(4.2 * len(self.models), 5.5) + 1.5, 4.0),
            squeeze=False,
            sharey=True,
        )
        counts = []
        for ax, model in zip(axes[0], self.models, strict=True):
            crossed = self._variants(self.diverged[self.diverged[MODEL] == model])
            for row, variant in enumerate(crossed):
                mine = self.runs[(self.runs[MODEL] == model) & (self.runs[VARIANT] == variant)]
                per_size = mine.groupby(BATCH_SIZE)["status"]
                hits = [(b, int((st == DIVERGED).sum()), len(st)) for b, st in per_size]
                hits = [(b, k, n) for b, k, n in hits if k]
                where, texts = [b for b, _, _ in hits], [f"{k}/{n}" for _, k, n in hits]
                self._crosses(ax, where, variant, texts, row)
            runs = self.done[self.done[MODEL] == model]
            for variant in self._variants(runs):
                points = runs[runs[VARIANT] == variant].groupby(BATCH_SIZE)["final_test_acc"]
                summary = [(size, *mean_ci(values)) for size, values in points]
                sizes, means, halves, ns = (list(column) for column in zip(*summary, strict=True))
                counts += ns
                ax.plot(sizes, means, label=variant, **self.style[variant])
                bars = [(s, m, h) for s, m, h in zip(sizes, means, halves, strict=True) if h]
                if bars:  # a 95% CI only where there are seeds to give one
                    s, m, h = zip(*bars, strict=True)
                    color = self.style[variant]["color"]
                    ax.errorbar(s, m, yerr=h, fmt="none", ecolor=color, capsize=3)
            self._chance_line(ax)
            ax.set_xscale("log", base=2)
            ax.set_xlim(min(self.sizes) / 1.4, max(self.sizes) * 1.4)
            ax.set_xticks(self.sizes, [str(s) for s in self.sizes])
            ax.minorticks_off()
            ax.set_title(model)
            ax.set_xlabel("batch size")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("final test accuracy (%)")
        spread = " ± 95% t-CI" if max(counts, default=0) > 1 else ""
        shown = f"mean{spread} of the completed seeds, {seeds_text(counts)}"
        title = f"Final test accuracy vs batch size ({shown if counts else 'no seed completed'})"
        if len(self.diverged):
            title += "; ✕ k/N at the axis: k of N seeds diverged"
        self._finish(fig, self._variants(self.runs), title)
        return fig

    def heatmap(self, epochs: pd.DataFrame):
        if self.done.empty and self.diverged.empty:
            return None
        variants = self._variants(self.runs)
        # One colour scale for all panels, spanning the results rather than 0..100.
        low, high = self.done["final_test_acc"].min(), self.done["final_test_acc"].max()
        if self.done.empty:
            low, high = 0.0, 100.0
        fig, axes = self.plt.subplots(
            1,
            len(self.models),
            figsize=(
                max(0.9 * len(self.sizes) * len(self.models) + 2.5, 5.5),
                0.6 * len(variants) + 2.2,
            ),
            squeeze=False,
            constrained_layout=True,
        )
        for ax, model in zip(axes[0], self.models, strict=True):
            runs = self.done[self.done[MODEL] == model]
            cells = runs.groupby([VARIANT, BATCH_SIZE])["final_test_acc"]
            means = cells.mean().unstack().reindex(index=variants, columns=self.sizes)
            counts = cells.count().unstack().reindex(index=variants, columns=self.sizes)
            image = ax.imshow(means.values.astype(float), cmap="viridis", vmin=low, vmax=high)
            ax.set_xticks(range(len(self.sizes)), [str(s) for s in self.sizes])
            ax.set_yticks(range(len(variants)), variants)
            ax.set_xlabel("batch size")
            ax.set_title(model)
            mine = self.runs[self.runs[MODEL] == model]
            for r, c in itertools.product(range(len(variants)), range(len(self.sizes))):
                value, n = means.values[r, c], counts.values[r, c]
                cell = mine[(mine[VARIANT] == variants[r]) & (mine[BATCH_SIZE] == self.sizes[c])]
                k = int((cell["status"] == DIVERGED).sum())
                # No completed run: the cell stays blank white, so dark text on it.
                if pd.isna(value):
                    text = f"diverged\n{k}/{len(cell)}" if k else "n/a"
                else:
                    text = f"{value:.2f}\n(n={int(n)})" + (f"\n✕ {k}/{len(cell)}" if k else "")
                dark = not pd.isna(value) and value < (low + high) / 2  # viridis is dark down low
                color = "white" if dark else "black"
                ax.text(c, r, text, ha="center", va="center", fontsize=7, color=color)
        fig.colorbar(image, ax=axes[0].tolist(), label="final test accuracy (%)")
        counts = self.done.groupby([MODEL, VARIANT, BATCH_SIZE]).size()
        shown = f"mean of the completed seeds, {seeds_text(counts)}" if len(counts) else ""
        title = f"Final test accuracy ({shown or 'no seed completed'}, as in the tables)"
        if len(self.diverged):
            title += "; ✕ k/N: k of the cell's N seeds diverged"
        fig.suptitle(f"{title}\n{self.label}", fontsize=10)
        return fig
