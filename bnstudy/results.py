"""From a folder of runs to the paper's tables and figures: `python -m bnstudy.results DIR`.

Collects every run's summary.csv and metrics.csv below DIR (bnstudy/collect.py) into two tidy
tables (runs.csv and epochs.csv at DIR's root), prints the tables (bnstudy/tables.py) and with
--plot writes PNG figures (bnstudy/figures.py). Reads records without importing torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from bnstudy.collect import ResultsError, asked_but_missing, collect
from bnstudy.figures import plot
from bnstudy.files import RecordsError, write_atomic
from bnstudy.tables import FORMATS, report

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
