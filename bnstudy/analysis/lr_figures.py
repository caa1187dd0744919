"""Validation accuracy against the learning rate, per variant and batch size, from an lr search:
every lr's seeds, and ✕ at the axis for an lr whose seeds diverged.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from bnstudy.analysis.collect import VARIANT, varies
from bnstudy.analysis.look import _axis_crosses, save, seeds_text, styles
from bnstudy.records import BATCH_SIZE, MODEL
from bnstudy.study.controls import variant_order


def plot_lr_sensitivity(runs: pd.DataFrame, out: Path) -> list[Path]:
    """Per setting, model and batch size: the validation score of each lr (log axis, a tick
    at every lr searched), one line per variant, the chosen lr filled; an lr with diverged
    seeds is an ✕ k/N on the axis. `runs` holds the search's runs and those it asked for."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bnstudy.analysis.tables import LR
    from bnstudy.analysis.tuning import CHOSEN, VARIANT_KEYS, cell_choices, cell_keys, lr_scores

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
