"""The paper's figures from collected runs, as PNG files: accuracy curves per epoch, final
accuracy against batch size, and a heatmap of the grid."""

from __future__ import annotations

import hashlib
import io
import itertools
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from bnstudy.collect import VARIANT, identity_columns
from bnstudy.files import write_atomic
from bnstudy.records import BATCH_SIZE, DATASET, MODEL, SEED, WIDTH
from bnstudy.tables import AXES, _details, _natural


def plot(runs: pd.DataFrame, epochs: pd.DataFrame, out: Path) -> list[Path]:
    """Write the figures as PNG into `out`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt

    written = []
    # One figure per setting but the model: the models are its panels.
    setting = [c for c in identity_columns(runs) if c not in ("run_id", MODEL, *AXES)]
    varying = [c for c in setting if runs[c].nunique(dropna=False) > 1]
    for key, group in runs.groupby(setting, sort=True, dropna=False):
        values = dict(zip(setting, key, strict=True))
        label = f"{values[DATASET]}, {_details(values, varying)}"
        slug = hashlib.sha256(label.encode()).hexdigest()[:6]
        slug = f"{values[DATASET]}-w{values[WIDTH]}-{slug}"
        sub_epochs = epochs.merge(group[["run_id"]], on="run_id") if not epochs.empty else epochs
        for name, draw in (
            ("curves", _plot_curves),
            ("final_vs_batch_size", _plot_final_vs_batch),
            ("heatmap", _plot_heatmap),
        ):
            fig = draw(plt, group, sub_epochs, label)
            if fig is None:
                continue
            written.append(_save(plt, fig, out / f"{name}-{slug}.png"))
    return written


def _save(plt, fig, path: Path) -> Path:
    """Write `fig` as a PNG atomically, close it, and return `path`."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    write_atomic(path, buffer.getvalue())
    return path


def _models(runs: pd.DataFrame) -> list[str]:
    return sorted(runs[MODEL].unique(), key=_natural)


def _norm_colors(norms: Iterable[str]) -> dict[str, str]:
    return {n: f"C{i}" for i, n in enumerate(sorted(norms))}


def _legend_and_title(fig, handles: list, title: str) -> None:
    """A two-line title on top and the variants' legend to the right, clear of the panels."""
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.82, 1))
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(0.83, 0.5), title="norm")


def _plot_curves(plt, runs: pd.DataFrame, epochs: pd.DataFrame, label: str):
    if epochs.empty:
        return None
    models = _models(runs)
    sizes = sorted(runs[BATCH_SIZE].unique())
    colors = _norm_colors(runs[VARIANT].unique())
    fig, axes = plt.subplots(
        len(models),
        len(sizes),
        figsize=(max(3.6 * len(sizes), 5.5), 2.9 * len(models) + 0.8),
        squeeze=False,
        sharey=True,
    )
    for i, model in enumerate(models):
        for j, size in enumerate(sizes):
            ax = axes[i][j]
            cell = epochs[(epochs[MODEL] == model) & (epochs[BATCH_SIZE] == size)]
            for norm, curves in cell.groupby(VARIANT):
                stats = curves.groupby("epoch")["test_acc"].agg(["mean", "min", "max"])
                # Markers: a run that diverged after one epoch is still a visible point.
                ax.plot(
                    stats.index,
                    stats["mean"],
                    color=colors[norm],
                    marker="o",
                    markersize=3,
                    label=norm,
                )
                if curves[SEED].nunique() > 1:
                    ax.fill_between(
                        stats.index, stats["min"], stats["max"], color=colors[norm], alpha=0.2
                    )
            ax.set_title(f"{model}, batch {size}", fontsize=9)
            ax.set_xlabel("epoch")
            if j == 0:
                ax.set_ylabel("test accuracy (%)")
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(plt.MaxNLocator(nbins=5, integer=True))
    handles = [plt.Line2D([], [], color=c, marker="o", label=n) for n, c in colors.items()]
    _legend_and_title(fig, handles, f"Test accuracy per epoch (band: min..max over seeds)\n{label}")
    return fig


def _plot_final_vs_batch(plt, runs: pd.DataFrame, epochs: pd.DataFrame, label: str):
    done = runs[runs["status"] == "completed"]
    if done.empty:
        return None
    models = _models(runs)
    colors = _norm_colors(runs[VARIANT].unique())
    fig, axes = plt.subplots(
        1, len(models), figsize=(max(4.2 * len(models), 5.5), 4.0), squeeze=False, sharey=True
    )
    for ax, model in zip(axes[0], models, strict=True):
        for norm, cell in done[done[MODEL] == model].groupby(VARIANT):
            stats = cell.groupby(BATCH_SIZE)["final_test_acc"].agg(["mean", "std"])
            ax.errorbar(
                stats.index,
                stats["mean"],
                yerr=stats["std"].fillna(0),
                marker="o",
                capsize=3,
                color=colors[norm],
                label=norm,
            )
        ax.set_xscale("log", base=2)
        sizes = sorted(runs[BATCH_SIZE].unique())
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.minorticks_off()
        ax.set_title(model)
        ax.set_xlabel("batch size")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("final test accuracy (%)")
    handles = [plt.Line2D([], [], color=c, marker="o", label=n) for n, c in colors.items()]
    _legend_and_title(
        fig, handles, f"Final test accuracy vs batch size (mean ± std over seeds)\n{label}"
    )
    return fig


def _plot_heatmap(plt, runs: pd.DataFrame, epochs: pd.DataFrame, label: str):
    models = _models(runs)
    norms, sizes = sorted(runs[VARIANT].unique()), sorted(runs[BATCH_SIZE].unique())
    done = runs[runs["status"] == "completed"]
    if done.empty:
        return None
    # One colour scale for all panels, spanning the results rather than 0..100.
    low, high = done["final_test_acc"].min(), done["final_test_acc"].max()
    fig, axes = plt.subplots(
        1,
        len(models),
        figsize=(max(0.75 * len(sizes) * len(models) + 2, 5.5), 0.6 * len(norms) + 2.2),
        squeeze=False,
        constrained_layout=True,
    )
    for ax, model in zip(axes[0], models, strict=True):
        grid = (
            done[done[MODEL] == model]
            .pivot_table(index=VARIANT, columns=BATCH_SIZE, values="final_test_acc")
            .reindex(index=norms, columns=sizes)
        )
        image = ax.imshow(grid.values.astype(float), cmap="viridis", vmin=low, vmax=high)
        ax.set_xticks(range(len(sizes)), [str(s) for s in sizes])
        ax.set_yticks(range(len(norms)), norms)
        ax.set_xlabel("batch size")
        ax.set_title(model)
        for r, c in itertools.product(range(len(norms)), range(len(sizes))):
            value = grid.values[r, c]
            # No completed run: the cell stays blank white, so dark text on it.
            text = "n/a" if pd.isna(value) else f"{value:.1f}"
            dark = not pd.isna(value) and value < (low + high) / 2  # viridis is dark down low
            ax.text(
                c, r, text, ha="center", va="center", fontsize=8, color="white" if dark else "black"
            )
    fig.colorbar(image, ax=axes[0].tolist(), label="final test accuracy (%)")
    fig.suptitle(f"Final test accuracy (mean over completed seeds)\n{label}", fontsize=10)
    return fig


def plot_lr_sensitivity(runs: pd.DataFrame, out: Path) -> list[Path]:
    """Per model and batch size: validation accuracy against lr (log axis), one line per
    variant; an lr where a seed diverged is an ✕ at the bottom of the panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bnstudy.tuning import LR, lr_scores

    scores = lr_scores(runs)
    written = []
    for (model, size), cell in scores.groupby([MODEL, BATCH_SIZE], sort=True):
        fig, ax = plt.subplots(figsize=(6.0, 4.0))
        for i, (variant, lines) in enumerate(cell.groupby(VARIANT, sort=True)):
            lines = lines.sort_values(LR)
            color = f"C{i % 10}"
            ax.plot(lines[LR], lines["score"], marker="o", color=color, label=variant)
            diverged = lines[lines["diverged"]]
            ax.scatter(diverged[LR], [0] * len(diverged), marker="x", color=color, s=60)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("learning rate (optim.lr)")
        ax.set_ylabel("final validation accuracy (%)")
        ax.set_ylim(bottom=-2)
        ax.grid(alpha=0.3)
        ax.set_title(f"{model}, batch {size}: lr sensitivity (✕ = diverged)", fontsize=10)
        ax.legend(fontsize=8)
        written.append(_save(plt, fig, out / f"lr_sensitivity-{model}-bs{size}.png"))
    return written
