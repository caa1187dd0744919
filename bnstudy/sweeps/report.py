"""Sweep bookkeeping that works with every launcher: each job's start, submission and outcome
in the sweep's ledger (bnstudy/records/ledger.py), its "run 3 of 8, ~10 min left" progress,
and the end-of-sweep report.

Jobs may run in this process (basic launcher), in worker processes on this machine (joblib,
submitit_local) or on other machines (SLURM), so each job appends JSON lines to a ledger file
in the sweep folder, and the process that launched the sweep reads it back when the sweep
ends. Jobs on this machine stop when the sweep's process ends; jobs on a cluster belong to
the scheduler and never watch it.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bnstudy import records
from bnstudy.records.ledger import LEDGER_ENV, append, outcomes, read_ledger
from bnstudy.sweeps.stopping import in_slurm_job

if TYPE_CHECKING:  # the grid imports Hydra's sweeper: results and tables need not
    from bnstudy.sweeps.grid import Cell

# The outcomes that mean "rerun the command": the run did not finish.
UNFINISHED = ("failed", "interrupted", "requeued")


# Set by the sweep's process for its jobs (inherited by worker processes): how many runs the
# sweep has and when it started, for each job's "run 3 of 8, ~10 min left" (`progress`).
SIZE_ENV = "BNSTUDY_SWEEP_SIZE"


STARTED_ENV = "BNSTUDY_SWEEP_STARTED"


def record_start(ident: dict[str, Any], run_dir: Path) -> None:
    """Note in the running sweep's ledger which run this job is (and its SLURM job, if it
    is one), before it trains."""
    entry = {"started": True, "run_dir": str(run_dir), "identity": ident}
    if in_slurm_job():
        entry["job"] = os.environ["SLURM_JOB_ID"]
    append(entry)


def record_submitted(cell: Cell, job_id: str) -> None:
    """Note in the ledger that `cell` went to a scheduler as `job_id` (queued until it starts)."""
    append({"submitted": job_id, "run_dir": str(cell.run_dir), "identity": cell.identity})


def record_job(status: str, run_dir: Path, error: str = "", skipped: bool = False) -> None:
    """Append this job's outcome to the running sweep's ledger (no-op outside a sweep)."""
    append({"status": status, "run_dir": str(run_dir), "error": error, "skipped": skipped})


def progress(job: int, run_left_s: float, run_fraction: float) -> str:
    """Where the sweep stands, for the epoch lines of its job number `job`: `run 3 of 8 (2
    done): ~1.5 min left in this run, ~12 min in the sweep`; empty without the sweep's
    process. The sweep's estimate assumes the runs still to go take as long as the ones so
    far (the sweep's time per finished run, counting this one's done fraction): rough where
    cells differ in size."""
    size, started, ledger = (os.environ.get(k) for k in (SIZE_ENV, STARTED_ENV, LEDGER_ENV))
    if not (size and started and ledger):
        return ""
    done = len(outcomes(read_ledger(Path(ledger))))
    total, elapsed = int(size), time.time() - float(started)
    text = f"run {job + 1} of {total} ({done} done): ~{_duration(run_left_s)} left"
    progress_runs = done + run_fraction
    if total - done > 1 and progress_runs > 0:
        sweep_left = (total - progress_runs) * elapsed / progress_runs
        text += f" in this run, ~{_duration(sweep_left)} in the sweep"
    return text


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def runs_text(n: int) -> str:
    """`1 run`, `4 runs`: how many runs a report or table speaks of."""
    return f"{n} run" if n == 1 else f"{n} runs"


def report(entries: list[dict[str, Any]], submitted: list[dict[str, Any]] = ()) -> str:
    """A few lines: how many runs ended how, where the unfinished ones are and why; and the
    jobs submitted to a scheduler that this process did not wait for."""
    ended = {e["run_dir"] for e in entries}
    left = [s for s in submitted if s["run_dir"] not in ended]
    counts = Counter(e["status"] for e in entries)
    skipped = sum(e["skipped"] and e["status"] in records.FINISHED for e in entries)
    parts = [
        f"{counts[s]} {s}" for s in ("completed", "diverged", *UNFINISHED, "running") if counts[s]
    ]
    if left:
        parts.append(f"{len(left)} submitted")
    verb = "submitted" if left else "finished"
    lines = [
        f"sweep {verb}: {runs_text(len(entries) + len(left))}: {', '.join(parts) or 'none'}"
        + (f" ({skipped} already done before this sweep)" if skipped else "")
    ]
    for e in entries:
        if e["status"] in UNFINISHED:
            lines.append(f"  {e['status']}: {e['run_dir']}: {e['error']}")
    if left:
        ids = ", ".join(s["submitted"] for s in left)
        lines.append(f"  SLURM jobs {ids}: they go on without this process")
        root = Path(left[0]["run_dir"]).parents[1]
        lines.append(f"  follow them with: python -m bnstudy.results {root}")
    if any(e["status"] in UNFINISHED for e in entries):
        lines.append("  rerun the same command to resume or retry the unfinished runs")
    return "\n".join(lines)
