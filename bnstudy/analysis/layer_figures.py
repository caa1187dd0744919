"""From layers.csv: γ over training and the signal against depth, per model and batch size;
every panel says how many seeds it shows."""

from __future__ import annotations

import pandas as pd

from bnstudy.analysis.collect import VARIANT
from bnstudy.analysis.look import SettingFigures, log_line, seeds_text, styles, zero_floor
from bnstudy.records import (
    SIGNAL_KINDS,
    SMALL_GAMMA,
    stage_name,
)


class LayerFigures(SettingFigures):
    """A setting's figures from layers.csv: γ over training and the signal against depth."""

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
