"""Sweep bookkeeping that works with every launcher: a ledger and the end-of-sweep report.

Jobs may run in this process (basic launcher), in worker processes (joblib, submitit_local)
or on other machines (SLURM), so each job appends one JSON line to a ledger file in the sweep
folder, and the process that launched the sweep reads it back when the sweep ends.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

LEDGER_ENV = "BNSTUDY_SWEEP_LEDGER"  # inherited by launcher workers and SLURM jobs
LEDGER_DIR = ".sweeps"


def record_job(status: str, run_dir: Path, error: str = "", skipped: bool = False) -> None:
    """Append this job's outcome to the running sweep's ledger (no-op outside a sweep)."""
    ledger = os.environ.get(LEDGER_ENV)
    if not ledger:
        return
    line = json.dumps(
        {"status": status, "run_dir": str(run_dir), "error": error, "skipped": skipped}
    )
    # One short O_APPEND write per job: lines from concurrent jobs do not interleave.
    with open(ledger, "a") as f:
        f.write(line + "\n")


def read_ledger(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def report(entries: list[dict[str, Any]]) -> str:
    """A few lines: how many runs ended how, and where the failed ones are."""
    counts = Counter(e["status"] for e in entries)
    skipped = sum(e["skipped"] for e in entries)
    parts = [
        f"{counts[s]} {s}" for s in ("completed", "diverged", "failed", "running") if counts[s]
    ]
    lines = [
        f"sweep finished: {len(entries)} runs: {', '.join(parts) or 'none'}"
        + (f" ({skipped} already done before this sweep)" if skipped else "")
    ]
    for e in entries:
        if e["status"] == "failed":
            lines.append(f"  failed: {e['run_dir']}: {e['error']}")
    return "\n".join(lines)


class SweepReport(Callback):
    """Opens the ledger when a multirun starts; prints the report and sets the exit status
    when it ends: 0 when every run completed or diverged (a result), 1 when any failed."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(config.hydra.sweep.dir) / LEDGER_DIR
        folder.mkdir(parents=True, exist_ok=True)
        ledger = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.jsonl"
        ledger.touch()
        os.environ[LEDGER_ENV] = str(ledger)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        ledger = os.environ.pop(LEDGER_ENV, None)
        if ledger is None:
            return
        entries = read_ledger(Path(ledger))
        # This is the command's own output, after the launcher's log lines.
        print(report(entries), flush=True)
        if any(e["status"] == "failed" for e in entries):
            sys.exit(1)
