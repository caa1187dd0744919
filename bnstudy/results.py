"""From a folder of runs to the paper's tables and figures: `python -m bnstudy.results DIR`.

Collects every run's summary.csv and metrics.csv below DIR into two tidy tables (runs.csv and
epochs.csv at DIR's root), prints variants × batch sizes tables of final and best test accuracy
and a status table, and with --plot writes PNG figures. Reads records without importing torch.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import itertools
import json
import math
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd

from bnstudy.records import (
    BATCH_SIZE,
    DATASET,
    EPOCH_COLUMNS,
    METRICS_FILE,
    MODEL,
    NORM,
    SEED,
    SUMMARY_COLUMNS,
    SUMMARY_FILE,
    WIDTH,
    RecordsError,
    RunFolder,
    write_atomic,
)
from bnstudy.sweep import GRID_SUFFIX, LEDGER_DIR, read_ledger

RUNS_FILE = "runs.csv"
EPOCHS_FILE = "epochs.csv"
FORMATS = ("text", "markdown", "csv", "latex")
# Identity columns every record has; a run's full identity is every column of its summary
# that is not a Summary field (see `identity_columns`).
REQUIRED = ("run_id", DATASET, MODEL, WIDTH, NORM, BATCH_SIZE, SEED)
# A table's axes and what is averaged over; every other identity column makes its own table.
AXES = (NORM, BATCH_SIZE, SEED)
# Shown in every table's title even when all runs share them.
HEADLINE_KEYS = (WIDTH, "optim.name", "optim.lr", "trainer.epochs", "data.val_size")
# The summary's headline numbers: never an epoch chosen on the test set.
ACCURACIES = (
    ("final_test_acc", "final test acc %"),
    ("test_acc_at_best_val", "test acc % at the best validation epoch"),
)
MISSING = "missing"
INTERRUPTED = "interrupted"  # status "running" but no process holds the run's lock


class ResultsError(RuntimeError):
    """DIR cannot be summarised; the message names it and what to do."""


# ------------------------------------------------------------------------------- collect


def _warn(message: str) -> None:
    print(f"bnstudy.results: warning: {message}", file=sys.stderr)


def _problem(text: str, required: tuple[str, ...], numeric: tuple[str, ...], one_row: bool):
    """Why a record file cannot be used (None if it can): a damaged file is left out whole."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return "empty file"
    header, body = rows[0], rows[1:]
    absent = [c for c in required if c not in header]
    if absent and "run_id" in header and "norm" in header:
        return (
            "written by a bnstudy before full run identities (no column "
            f"{', '.join(absent)}): its config is not fully known; rerun its config"
        )
    if absent:
        return f"not a bnstudy record (no column {', '.join(absent)})"
    if not body:
        return "header only, no rows"
    if one_row and len(body) != 1:
        return f"{len(body)} rows where one is expected"
    where = [header.index(c) for c in numeric]
    for n, row in enumerate(body, start=2):
        if len(row) != len(header):
            return f"line {n} has {len(row)} fields, the header {len(header)}"
        for i in where:
            try:
                float(row[i] or "nan")  # empty: a value the run does not have (no validation)
            except ValueError:
                return f"line {n}: {header[i]}={row[i]!r} is not a number"
    return None


def _concat_csvs(
    paths: list[Path],
    root: Path,
    required: tuple[str, ...],
    numeric: tuple[str, ...] = (),
    one_row: bool = False,
    warn: Callable[[str], None] = _warn,
) -> pd.DataFrame:
    """Read many small CSVs as one: files with one header are concatenated as text first,
    which is far faster than a DataFrame per file (1,000 runs in well under a second).
    A file that is damaged (garbage, header only, a malformed row) is reported and left out."""
    by_header: dict[str, list[str]] = {}
    for path in paths:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            warn(f"{path}: cannot be read ({type(e).__name__}); left out")
            continue
        problem = _problem(text, required, numeric, one_row)
        if problem is not None:
            warn(f"{path}: {problem}; left out")
            continue
        header, _, body = text.partition("\n")
        rel = path.parent.relative_to(root).as_posix() or "."
        lines = [f"{line},{_quote(rel)}" for line in body.splitlines() if line]
        by_header.setdefault(header, []).extend(lines)
    frames = [
        pd.read_csv(io.StringIO(f"{header},run_dir\n" + "\n".join(lines)))
        for header, lines in by_header.items()
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _quote(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def collect(root: Path, warn: Callable[[str], None] = _warn) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every run below `root`: (runs, one row per run; epochs, one row per run and epoch).
    Damaged record files are reported through `warn` and left out."""
    if not root.is_dir():
        raise ResultsError(f"{root} is not a folder; give the output folder of a run or sweep")
    summaries = sorted(root.rglob(SUMMARY_FILE))
    if not summaries:
        raise ResultsError(
            f"no runs under {root} (no {SUMMARY_FILE} found); give paths.output_root of a run or "
            "sweep, e.g. outputs"
        )
    runs = _concat_csvs(summaries, root, (*REQUIRED, "status"), one_row=True, warn=warn)
    if runs.empty:
        raise ResultsError(f"no readable {SUMMARY_FILE} under {root}; see the warnings above")
    runs = _once_per_run(runs, warn)
    # "running" in a summary whose process is gone (killed, pre-empted) means interrupted.
    for i in runs.index[runs["status"] == "running"]:
        if not RunFolder(root / runs.at[i, "run_dir"]).is_held():
            runs.at[i, "status"] = INTERRUPTED
    epochs = _concat_csvs(
        sorted(root.rglob(METRICS_FILE)),
        root,
        (*REQUIRED, *EPOCH_COLUMNS),
        numeric=EPOCH_COLUMNS,
        warn=warn,
    )
    if not epochs.empty:
        epochs = epochs[epochs["run_dir"].isin(runs["run_dir"])]
        epochs = epochs.sort_values(["run_id", "epoch"]).reset_index(drop=True)
    runs = runs.sort_values(["run_id", "run_dir"]).reset_index(drop=True)
    return runs, epochs


def _once_per_run(runs: pd.DataFrame, warn: Callable[[str], None]) -> pd.DataFrame:
    """One row per run id: two folders with one identity and seed are the same run twice
    (a copy, or two roots that reach one run); counting both would double its weight."""
    runs = runs.sort_values("run_dir")
    twice = runs["run_id"].duplicated(keep="first")
    for _, row in runs[twice].iterrows():
        [first] = runs.loc[(runs["run_id"] == row["run_id"]) & ~twice, "run_dir"]
        warn(
            f"{first} and {row['run_dir']} hold the same run (identity and seed, run "
            f"{row['run_id']}); counted once, from {first}"
        )
    return runs[~twice]


def identity_columns(frame: pd.DataFrame) -> list[str]:
    """The identity columns of a runs or epochs frame: everything but the records' fields."""
    fields = {*SUMMARY_COLUMNS, *EPOCH_COLUMNS, "run_dir"}
    return [c for c in frame.columns if c not in fields]


def asked_but_missing(
    root: Path, runs: pd.DataFrame, warn: Callable[[str], None] = _warn
) -> pd.DataFrame:
    """Runs that a sweep below `root` was asked for but that have no folder yet, as rows with
    status "missing": each sweep's grid (.sweeps/*.grid.json, every override combination as
    Hydra composed it) and the jobs its ledger saw start."""
    asked: list[dict] = []
    for path in sorted(root.rglob(f"{LEDGER_DIR}/*")):
        try:
            if path.name.endswith(GRID_SUFFIX):
                asked += json.loads(path.read_text())
            elif path.suffix == ".jsonl":
                asked += [e["identity"] for e in read_ledger(path) if e.get("started")]
        except (OSError, ValueError, KeyError, TypeError) as e:
            warn(f"{path}: cannot be read ({type(e).__name__}); left out")
    asked = [a for a in asked if isinstance(a, dict) and set(REQUIRED) <= set(a)]
    if not asked:
        return runs.iloc[0:0]
    wanted = pd.DataFrame(asked).drop_duplicates("run_id")
    missing = wanted[~wanted["run_id"].isin(runs["run_id"])]
    return missing.assign(status=MISSING, run_dir="").reset_index(drop=True)


# -------------------------------------------------------------------------------- tables


def _settings(runs: pd.DataFrame) -> Iterable[tuple[str, pd.DataFrame]]:
    """One table per setting: runs equal in every identity column but the axes, so a cell
    only ever averages over seeds. The title names the headline keys and every key that
    varies between the tables."""
    setting = [c for c in identity_columns(runs) if c not in ("run_id", *AXES)]
    varying = [c for c in setting if runs[c].nunique(dropna=False) > 1]
    groups = runs.groupby(setting, sort=False, dropna=False)
    keyed = [(dict(zip(setting, key, strict=True)), group) for key, group in groups]
    for values, group in sorted(keyed, key=lambda vg: _setting_order(vg[0])):
        yield f"{values[DATASET]} · {values[MODEL]} ({_details(values, varying)})", group


def _details(values: dict, varying: list[str]) -> str:
    """`key=value, …` for the headline keys and the varying ones (dataset and model aside)."""
    shown = [k for k in (*HEADLINE_KEYS, *varying) if k in values and k not in (DATASET, MODEL)]
    return ", ".join(f"{k}={_text(values[k])}" for k in dict.fromkeys(shown))


def _setting_order(values: dict) -> tuple:
    """Dataset, then models by depth (resnet18 before resnet101), then the rest as text."""
    return (str(values[DATASET]), _natural(str(values[MODEL])), str(values))


def _text(value: object) -> str:
    if isinstance(value, float):
        return "unset" if math.isnan(value) else f"{value:g}"
    return str(value)


def _seeds(group: pd.DataFrame) -> list[int]:
    return sorted(group[SEED].unique())


def accuracy_table(group: pd.DataFrame, column: str) -> pd.DataFrame:
    """Rows: variants; columns: batch sizes; cells: mean ± std (n) over completed seeds."""
    norms, sizes = sorted(group[NORM].unique()), sorted(group[BATCH_SIZE].unique())
    n_seeds = len(_seeds(group))
    table = pd.DataFrame(index=pd.Index(norms, name="norm"), columns=sizes, dtype=object)
    for norm in norms:
        for size in sizes:
            cell = group[(group[NORM] == norm) & (group[BATCH_SIZE] == size)]
            table.loc[norm, size] = _accuracy_cell(cell, column, n_seeds)
    table.columns = pd.Index([f"bs {s}" for s in sizes])
    return table


def _accuracy_cell(cell: pd.DataFrame, column: str, n_seeds: int) -> str:
    done = cell[cell["status"] == "completed"][column].dropna()
    if done.empty:
        statuses = sorted(cell["status"].unique())
        return "/".join(statuses) if statuses else MISSING
    text = f"{done.mean():.2f}"
    if n_seeds > 1:
        std = done.std() if len(done) > 1 else float("nan")
        text += f" ± {std:.2f}" if not math.isnan(std) else ""
        text += f" (n={len(done)})"
    others = len(cell) - len(done)
    if others:
        text += f" +{others} " + "/".join(sorted(cell[cell["status"] != "completed"]["status"]))
    return text


def status_table(group: pd.DataFrame) -> pd.DataFrame:
    """Rows: variants; columns: batch sizes; cells: how many runs are in which state."""
    norms, sizes = sorted(group[NORM].unique()), sorted(group[BATCH_SIZE].unique())
    seeds = _seeds(group)
    table = pd.DataFrame(index=pd.Index(norms, name="norm"), columns=sizes, dtype=object)
    for norm in norms:
        for size in sizes:
            cell = group[(group[NORM] == norm) & (group[BATCH_SIZE] == size)]
            counts = cell["status"].value_counts().to_dict()
            missing = len(set(seeds) - set(cell[SEED]))
            if missing:
                counts[MISSING] = missing
            table.loc[norm, size] = ", ".join(
                f"{n} {s}" if len(seeds) > 1 else s for s, n in sorted(counts.items())
            )
    table.columns = pd.Index([f"bs {s}" for s in sizes])
    return table


def render(table: pd.DataFrame, fmt: str, title: str) -> str:
    """One table as text, markdown, csv or latex (no extra dependencies for any)."""
    header = [table.index.name or "", *map(str, table.columns)]
    rows = [[str(i), *map(str, r)] for i, r in zip(table.index, table.values, strict=True)]
    if fmt == "csv":
        buffer = io.StringIO()
        table.to_csv(buffer)
        return f"# {title}\n{buffer.getvalue()}"
    if fmt == "markdown":
        lines = [f"**{title}**", "", "| " + " | ".join(header) + " |"]
        lines.append("|" + "|".join("---" for _ in header) + "|")
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines) + "\n"
    if fmt == "latex":

        def esc(s: str) -> str:
            return s.replace("_", r"\_").replace("±", r"$\pm$").replace("%", r"\%")

        lines = [r"\begin{table}[h]", r"\centering", rf"\caption{{{esc(title)}}}"]
        lines += [r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\hline"]
        lines.append(" & ".join(esc(h) for h in header) + r" \\ \hline")
        lines += [" & ".join(esc(c) for c in r) + r" \\" for r in rows]
        lines += [r"\hline", r"\end{tabular}", r"\end{table}"]
        return "\n".join(lines) + "\n"
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    fmt_row = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))  # noqa: E731
    return "\n".join([title, fmt_row(header), *map(fmt_row, rows)]) + "\n"


def report(runs: pd.DataFrame, fmt: str = "text") -> str:
    """All tables for `runs`: final test accuracy, the test accuracy at the best validation
    epoch (when runs hold out a validation split), then status, per setting."""
    parts = []
    for title, group in _settings(runs):
        for column, what in ACCURACIES:
            if column in group and group[column].notna().any():
                parts.append(render(accuracy_table(group, column), fmt, f"{what} — {title}"))
        parts.append(render(status_table(group), fmt, f"status — {title}"))
    counts = runs["status"].value_counts().to_dict()
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    lines = [f"{len(runs)} runs: {summary}"]
    for _, run in runs[runs["status"] == "failed"].iterrows():
        lines.append(f"  failed: {run['run_dir']}: {run.get('error', '')}")
    if fmt in ("text", "markdown"):
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


# ------------------------------------------------------------------------------- figures


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
            path = out / f"{name}-{slug}.png"
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
            plt.close(fig)
            write_atomic(path, buffer.getvalue())
            written.append(path)
    return written


def _natural(name: str) -> tuple[str, int]:
    """Sort key that puts resnet18 before resnet101."""
    digits = "".join(ch for ch in name if ch.isdigit())
    return name.rstrip("0123456789"), int(digits or 0)


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
    colors = _norm_colors(runs[NORM].unique())
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
            for norm, curves in cell.groupby(NORM):
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
    colors = _norm_colors(runs[NORM].unique())
    fig, axes = plt.subplots(
        1, len(models), figsize=(max(4.2 * len(models), 5.5), 4.0), squeeze=False, sharey=True
    )
    for ax, model in zip(axes[0], models, strict=True):
        for norm, cell in done[done[MODEL] == model].groupby(NORM):
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
    norms, sizes = sorted(runs[NORM].unique()), sorted(runs[BATCH_SIZE].unique())
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
            .pivot_table(index=NORM, columns=BATCH_SIZE, values="final_test_acc")
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


# ----------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bnstudy.results",
        description="Summarise a folder of bnstudy runs as tables (and figures with --plot).",
    )
    parser.add_argument("dir", type=Path, help="a run, a sweep, or a folder of sweeps")
    parser.add_argument("--format", choices=FORMATS, default="text", help="table format")
    parser.add_argument("--plot", action="store_true", help="write PNG figures into DIR")
    args = parser.parse_args(argv)
    try:
        runs, epochs = collect(args.dir)
        write_atomic(args.dir / RUNS_FILE, runs.to_csv(index=False).encode())
        write_atomic(args.dir / EPOCHS_FILE, epochs.to_csv(index=False).encode())
    except (ResultsError, RecordsError) as e:
        print(f"bnstudy.results: error: {e}", file=sys.stderr)
        return 2
    # Tables also show the runs a sweep asked for that have not started: a half-done grid.
    print(report(pd.concat([runs, asked_but_missing(args.dir, runs)]), args.format))
    if args.format in ("text", "markdown"):
        print(f"tidy tables: {args.dir / RUNS_FILE}, {args.dir / EPOCHS_FILE}")
    if args.plot:
        for path in plot(runs, epochs, args.dir):
            print(f"figure: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
