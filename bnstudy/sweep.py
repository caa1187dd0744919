"""Sweep bookkeeping that works with every launcher: a ledger and the end-of-sweep report.

Jobs may run in this process (basic launcher), in worker processes (joblib, submitit_local)
or on other machines (SLURM), so each job appends one JSON line to a ledger file in the sweep
folder, and the process that launched the sweep reads it back when the sweep ends.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from bnstudy import records
from bnstudy.errors import PROG, USER_ERRORS, exit_with
from bnstudy.preflight import check

LEDGER_ENV = "BNSTUDY_SWEEP_LEDGER"  # inherited by launcher workers and SLURM jobs
LEDGER_DIR = ".sweeps"
GRID_SUFFIX = ".grid.json"  # beside each ledger: the runs the sweep was asked for


def _override_columns() -> dict[str, str]:
    """Override key -> identity column: `norm.name` and the group choice `norm` alike."""
    columns = {}
    for column, key in records.IDENTITY_KEYS.items():
        columns[key] = column
        if key.endswith(".name"):
            columns[key.removesuffix(".name")] = column
    return columns


def asked_grid(config: DictConfig) -> list[dict[str, Any]]:
    """Identity of every run a multirun was asked for: the composed config's values, with
    the swept ones (from hydra.sweeper.params, then the command line) expanded."""
    job = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
    base = records.identity(OmegaConf.to_container(job, resolve=True))
    params = config.hydra.sweeper.get("params") or {}
    texts = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    columns = _override_columns()
    swept: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides(texts):
        column = columns.get(override.key_or_group)
        if column is not None:  # later (command-line) values replace the file's
            values = override.sweep_string_iterator() if override.is_sweep_override() else None
            swept[column] = list(values) if values is not None else [str(override.value())]
    return [
        {**base, **dict(zip(swept, combo, strict=True))}
        for combo in itertools.product(*swept.values())
    ]


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
    skipped = sum(e["skipped"] and e["status"] in records.FINISHED for e in entries)
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
        try:
            # The values every job shares (the command line's and the files', before the swept
            # ones): a mistake there would fail every run alike, so refuse the whole sweep.
            check(config)
        except USER_ERRORS as e:
            # Exit, not raise: Hydra turns a callback's exception into a warning and goes on.
            exit_with(PROG, e)
        folder = Path(config.hydra.sweep.dir) / LEDGER_DIR
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        grid = json.dumps(asked_grid(config), indent=1).encode()
        records.write_atomic(folder / f"{stem}{GRID_SUFFIX}", grid)
        ledger = folder / f"{stem}.jsonl"
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
