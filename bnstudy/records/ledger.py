"""A sweep's ledger: one JSON line per job start (with the run's identity) and per outcome,
appended by jobs wherever they run and read back by the sweep's report and by
bnstudy.results. Beside it, the sweep's grid (every run it was asked for). No torch here."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

LEDGER_ENV = "BNSTUDY_SWEEP_LEDGER"  # inherited by launcher workers and SLURM jobs


LEDGER_DIR = ".sweeps"


GRID_SUFFIX = ".grid.json"  # beside each ledger: the runs the sweep was asked for


def append(entry: dict[str, Any]) -> None:
    ledger = os.environ.get(LEDGER_ENV)
    if not ledger:  # not in a sweep
        return
    # One short O_APPEND write per line: lines from concurrent jobs do not interleave.
    with open(ledger, "a") as f:
        f.write(json.dumps(entry, default=str) + "\n")


def read_ledger(path: Path) -> list[dict[str, Any]]:
    """Every line of a ledger: jobs' starts (with their identity) and outcomes (with status)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def outcomes(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries if "status" in e]
