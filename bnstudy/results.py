"""From a folder of runs to the paper's tables and figures: `python -m bnstudy.results DIR`.

Collects every run's summary.csv, metrics.csv and layers.csv below DIR
(bnstudy/analysis/collect.py) into tidy tables (runs.csv, epochs.csv and layers.csv at DIR's
root), prints the tables (bnstudy/analysis/tables.py) and with --plot writes PNG figures
(bnstudy/analysis/figures.py). Reads records without importing torch (figures import it for the
datasets' class counts).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from bnstudy.analysis.asked import with_asked
from bnstudy.analysis.collect import ResultsError, collect, collect_layers
from bnstudy.analysis.figures import plot
from bnstudy.analysis.lr_figures import plot_lr_sensitivity
from bnstudy.analysis.tables import FORMATS, render, report
from bnstudy.analysis.tuning import NO_VALIDATION, tuned_cells, tuned_table
from bnstudy.records import LAYERS_FILE, SUMMARY_FILE, RecordsError, write_atomic

TUNED_FILE = "tuned.csv"
RUNS_FILE = "runs.csv"
EPOCHS_FILE = "epochs.csv"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bnstudy.results",
        description="Summarise a folder of bnstudy runs as tables (and figures with --plot).",
    )
    parser.add_argument("dir", type=Path, help="a run, a sweep, or a folder of sweeps")
    parser.add_argument("--format", choices=FORMATS, default="text", help="table format")
    parser.add_argument("--plot", action="store_true", help="write PNG figures into DIR")
    parser.add_argument(
        "--tuned",
        action="store_true",
        help="DIR is an lr search: each variant at the lr chosen on validation, test accuracy "
        "with 95%% CIs, paired differences to batchnorm (and lr-sensitivity figures with --plot)",
    )
    args = parser.parse_args(argv)
    try:
        runs, epochs = collect(args.dir)
        layers = collect_layers(args.dir, runs)
        write_atomic(args.dir / RUNS_FILE, runs.to_csv(index=False).encode())
        write_atomic(args.dir / EPOCHS_FILE, epochs.to_csv(index=False).encode())
        # In a run's own folder its layers.csv is the record, and stays as it is.
        gathered = not (args.dir / SUMMARY_FILE).is_file() and not layers.empty
        if gathered:
            write_atomic(args.dir / LAYERS_FILE, layers.to_csv(index=False).encode())
    except (ResultsError, RecordsError) as e:
        print(f"bnstudy.results: error: {e}", file=sys.stderr)
        return 2
    # Tables also show the runs a sweep asked for that have not started: a half-done grid.
    asked = with_asked(args.dir, runs)
    if args.tuned:
        return _tuned(runs, asked, args)
    print(report(asked, args.format))
    if args.format in ("text", "markdown"):
        tidy = [RUNS_FILE, EPOCHS_FILE, *([LAYERS_FILE] if gathered else [])]
        print(f"tidy tables: {', '.join(str(args.dir / name) for name in tidy)}")
    if args.plot:
        for path in plot(runs, epochs, args.dir, layers):
            print(f"figure: {path}")
    return 0


def _tuned(runs: pd.DataFrame, asked: pd.DataFrame, args: argparse.Namespace) -> int:
    table = tuned_table(asked)
    if table.empty or (table["state"] == NO_VALIDATION).all():
        print(
            f"bnstudy.results: error: no run in {args.dir} has a validation accuracy to choose an "
            "lr on; run an lr search (tuning=search, data.val_size > 0) first",
            file=sys.stderr,
        )
        return 2
    write_atomic(args.dir / TUNED_FILE, table.to_csv(index=False).encode())
    for title, cell in tuned_cells(table):
        print(render(cell, args.format, f"tuned — {title}; {RULE}"))
    if args.format in ("text", "markdown"):
        print(f"tuned table: {args.dir / TUNED_FILE}")
    if args.plot:
        for path in plot_lr_sensitivity(asked, args.dir):
            print(f"figure: {path}")
    return 0


# The lr rule in a title's words (bnstudy/analysis/tuning.py says why).
RULE = (
    "lr chosen on validation among the lrs at which every seed asked for completed; "
    "an lr with a diverged seed is ruled out"
)


if __name__ == "__main__":
    sys.exit(main())
