"""Sweep bookkeeping that works with every launcher: the grid a sweep was asked for, its
ledger (bnstudy/ledger.py) and the end-of-sweep report.

Jobs may run in this process (basic launcher), in worker processes (joblib, submitit_local)
or on other machines (SLURM), so each job appends JSON lines to a ledger file in the sweep
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

from hydra import compose
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from bnstudy import records
from bnstudy.errors import PROG, USER_ERRORS, exit_with
from bnstudy.ledger import GRID_SUFFIX, LEDGER_DIR, LEDGER_ENV, append, outcomes, read_ledger
from bnstudy.preflight import check, resolved
from bnstudy.stopping import OWNER_ENV


def combinations(params: dict[str, Any], overrides: list[str]) -> list[list[str]]:
    """Every override combination of a multirun, as Hydra's basic sweeper makes them: the
    sweeper's `params` (an experiment's grid) and the command line's `overrides`."""
    texts = [f"{k}={v}" for k, v in params.items()] + list(overrides)
    parsed = OverridesParser.create().parse_overrides(texts)
    [combos] = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return combos


def asked_grid(config: DictConfig) -> list[dict[str, Any]]:
    """The identity of every run a multirun was asked for, each composed by Hydra itself from
    its override combination (so a group's defaults, e.g. optim=adam's lr, are the real ones)."""
    params = config.hydra.sweeper.get("params") or {}
    grid = []
    for combination in combinations(params, config.hydra.overrides.task):
        try:
            job = compose(config.hydra.job.config_name, overrides=combination)
            grid.append(records.identity(resolved(job)))
        except USER_ERRORS:
            continue  # a cell that cannot run is recorded as failed when the sweep reaches it
    return grid


def record_start(ident: dict[str, Any], run_dir: Path) -> None:
    """Note in the running sweep's ledger which run this job is, before it trains."""
    append({"started": True, "run_dir": str(run_dir), "identity": ident})


def record_job(status: str, run_dir: Path, error: str = "", skipped: bool = False) -> None:
    """Append this job's outcome to the running sweep's ledger (no-op outside a sweep)."""
    append({"status": status, "run_dir": str(run_dir), "error": error, "skipped": skipped})


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
        # Jobs in processes of their own (joblib, submitit_local) stop when this one ends.
        os.environ[OWNER_ENV] = str(os.getpid())

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ.pop(OWNER_ENV, None)
        ledger = os.environ.pop(LEDGER_ENV, None)
        if ledger is None:
            return
        entries = outcomes(read_ledger(Path(ledger)))
        # This is the command's own output, after the launcher's log lines.
        print(report(entries), flush=True)
        if any(e["status"] == "failed" for e in entries):
            sys.exit(1)
