"""The paper's figures from collected runs, as PNG files: accuracy curves per epoch, final
accuracy against batch size, a heatmap of the grid, validation accuracy against lr and, from
layers.csv, γ over training and the signal against depth. Every figure says how many seeds
it shows, draws a spread only where there are several, gives each variant its own colour,
marker and dashes (baseline first), and rounds as the tables do. A diverged run is never
averaged away: it is an ✕ at the axis where it diverged (the epoch, the batch size, the lr)
and counted in the legend, the cell or the title."""

from __future__ import annotations

import hashlib
import io
import itertools
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from bnstudy.collect import COMPLETED, DIVERGED, VARIANT, varies
from bnstudy.controls import variant_order
from bnstudy.files import write_atomic
from bnstudy.records import (
    BATCH_SIZE,
    DATASET,
    MODEL,
    SEED,
    SIGNAL_KINDS,
    SMALL_GAMMA,
    WIDTH,
    stage_name,
)
from bnstudy.stats import mean_ci
from bnstudy.tables import AXES, PER_CELL, PER_CELL_KEYS, _details, _natural, setting_keys


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
        figure = SettingFigures(plt, group, style, label, _chance(values[DATASET]))
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
            for name, draw in (("gamma", figure.gamma), ("signal", figure.signal)):
                fig = draw(cell, f"{model}, batch {size}")
                if fig is not None:
                    written.append(save(plt, fig, out / f"{name}-{model}-bs{size}-{slug}.png"))
    return written


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
    from bnstudy.data import DATASETS  # imports torch: only when figures are drawn

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

    def gamma(self, layers: pd.DataFrame, where: str):
        """Mean γ and the share of channels with |γ| < SMALL_GAMMA per stage against epoch,
        one column of panels per variant that has γ."""
        norms = layers[(layers["kind"] == "norm") & layers["gamma_mean"].notna()]
        variants = self._variants(norms)
        if not variants:
            return None
        # Per run, stage and epoch, over all channels of the stage: layer means weighted by
        # their channels; then the mean over seeds.
        weighted = norms.assign(
            g=norms["gamma_mean"] * norms["channels"], s=norms["gamma_small"] * norms["channels"]
        )
        per_run = weighted.groupby([VARIANT, "run_id", "stage", "epoch"])[
            ["g", "s", "channels"]
        ].sum()
        per_run = per_run.assign(
            g=per_run["g"] / per_run["channels"], s=per_run["s"] / per_run["channels"]
        )
        stats = per_run.groupby([VARIANT, "stage", "epoch"])[["g", "s"]].mean().reset_index()
        fig, axes = self.plt.subplots(
            2, len(variants), figsize=(3.4 * len(variants) + 1.8, 5.6), squeeze=False, sharex=True
        )
        stages = sorted(stats["stage"].unique())
        stage_style = styles([stage_name(s) for s in stages])
        for j, variant in enumerate(variants):
            rows = stats[stats[VARIANT] == variant]
            for stage in stages:
                line = rows[rows["stage"] == stage]
                look = stage_style[stage_name(stage)]
                axes[0][j].plot(line["epoch"], line["g"], **look)
                axes[1][j].plot(line["epoch"], 100 * line["s"], clip_on=False, **look)
            axes[0][j].set_title(variant, fontsize=9)
            axes[1][j].set_ylim(0, max(10, 110 * rows["s"].max()))  # a share, in %
            axes[1][j].set_xlabel("epoch (0 = init)")
            for ax in axes[:, j]:
                ax.grid(alpha=0.3)
                ax.xaxis.set_major_locator(self.plt.MaxNLocator(nbins=5, integer=True))
        axes[0][0].set_ylabel("mean γ")
        axes[1][0].set_ylabel(f"channels with |γ| < {SMALL_GAMMA} (%)")
        seeds = seeds_text(per_run.reset_index().groupby(VARIANT)["run_id"].nunique())
        fig.suptitle(f"γ per stage over training ({where}, {seeds})\n{self.label}", fontsize=10)
        fig.tight_layout(rect=(0, 0, 0.84, 1))
        handles = [self.plt.Line2D([], [], label=n, **look) for n, look in stage_style.items()]
        fig.legend(handles=handles, loc="center left", bbox_to_anchor=(0.85, 0.5), fontsize=8)
        return fig

    def signal(self, layers: pd.DataFrame, where: str):
        """Std of each site's output on the probe batch against depth, at init (epoch 0) and
        at each run's last recorded epoch, one line per variant, log scale."""
        sites = layers[layers["kind"].isin(SIGNAL_KINDS) & layers["act_std"].notna()]
        if sites.empty:
            return None
        last = sites.groupby("run_id")["epoch"].transform("max")
        floor = zero_floor(sites["act_std"])
        fig, axes = self.plt.subplots(1, 2, figsize=(10.5, 4.0), sharey=True, squeeze=False)
        for ax, (when, rows) in zip(
            axes[0],
            (
                ("at init", sites[sites["epoch"] == 0]),
                ("at the end", sites[sites["epoch"] == last]),
            ),
            strict=True,
        ):
            for variant in self._variants(rows):
                line = rows[rows[VARIANT] == variant].groupby("depth")["act_std"].mean()
                log_line(ax, line.index, line.values, floor, label=variant, **self.style[variant])
            ax.set_yscale("log")
            ax.set_title(when, fontsize=9)
            ax.set_xlabel("depth (0 = stem; last = logits)")
            ax.grid(alpha=0.3, which="both")
        axes[0][0].set_ylabel("std of the output on the probe batch")
        seeds = seeds_text(sites.groupby(VARIANT)["run_id"].nunique())
        title = f"Signal against depth ({where}, mean of {seeds}; end = last recorded epoch)"
        if (sites["act_std"] == 0).any():
            title += f"; ✕ at {floor:.2g}: std 0, a dead output"
        self._finish(fig, self._variants(sites), title, chance=False)
        return fig


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


def plot_lr_sensitivity(runs: pd.DataFrame, out: Path) -> list[Path]:
    """Per setting, model and batch size: the validation score of each lr (log axis, a tick
    at every lr searched), one line per variant, the chosen lr filled; an lr with diverged
    seeds is an ✕ k/N on the axis. `runs` holds the search's runs and those it asked for."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bnstudy.tuning import CHOSEN, LR, VARIANT_KEYS, cell_choices, cell_keys, lr_scores

    keys = [*cell_keys(runs), VARIANT, LR]
    chosen = cell_choices(runs)
    chosen = chosen.loc[chosen["state"] == CHOSEN, keys].assign(chosen=True)
    scores = lr_scores(runs).merge(chosen, on=keys, how="left")
    scores["chosen"] = scores["chosen"].eq(True)
    style = styles(variant_order(scores[VARIANT]))
    # Anything else that varies between the search's cells makes figures of its own.
    others = [k for k in cell_keys(runs) if k not in (*VARIANT_KEYS, MODEL, BATCH_SIZE)]
    others = [k for k in others if varies(scores, k)]
    written = []
    for key, panel in scores.groupby([*others, MODEL, BATCH_SIZE], sort=True, dropna=False):
        *values, model, size = key
        fig, ax = plt.subplots(figsize=(7.0, 4.2))
        lrs = sorted(panel[LR].unique())
        crossed = [v for v in style if v in set(panel.loc[panel["diverged"] > 0, VARIANT])]
        for variant in [v for v in style if v in set(panel[VARIANT])]:
            lines = panel[panel[VARIANT] == variant].sort_values(LR)
            look = style[variant]
            k, n = int(lines["diverged"].sum()), int(lines["asked"].sum())
            label = f"{variant} (✕ diverged {k}/{n} seeds)" if k else variant
            ax.plot(lines[LR], lines["score"], label=label, **look)
            hits = lines[lines["diverged"] > 0]
            pairs = zip(hits["diverged"], hits["asked"], strict=True)
            counts = [f"{d}/{a}" for d, a in pairs]
            row = crossed.index(variant) if variant in crossed else 0
            _axis_crosses(ax, hits[LR], look["color"], counts, row)
            best = lines[lines["chosen"]]
            filled = {**look, "markerfacecolor": look["color"], "linestyle": "none"}
            ax.plot(best[LR], best["score"], **filled)
        ax.set_xscale("log", base=2)
        ax.set_xlim(min(lrs) / 1.3, max(lrs) * 1.3)
        ax.set_xticks(lrs, [f"{lr:g}" for lr in lrs])
        ax.minorticks_off()
        ax.set_xlabel("learning rate (optim.lr)")
        ax.set_ylabel("final validation accuracy (%)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        seeds = seeds_text(panel.loc[panel["eligible"], "completed"])
        setting = ", ".join(f"{k}={v}" for k, v in zip(others, values, strict=True))
        where = f"{model}, batch {size}" + (f", {setting}" if setting else "")
        ax.set_title(
            f"{where}: lr sensitivity (mean of the completed seeds, {seeds};\n"
            "filled: the lr chosen; ✕ k/N on the axis: k of N seeds diverged, lr ruled out)",
            fontsize=9,
        )
        ax.legend(fontsize=8)
        slug = f"-{hashlib.sha256(setting.encode()).hexdigest()[:6]}" if setting else ""
        written.append(save(plt, fig, out / f"lr_sensitivity-{model}-bs{size}{slug}.png"))
    return written


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
