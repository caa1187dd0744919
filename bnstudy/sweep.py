"""Sweep bookkeeping that works with every launcher: each cell of the grid checked as it will
run, the grid a sweep was asked for, its ledger (bnstudy/ledger.py) and the end-of-sweep report.

Jobs may run in this process (basic launcher), in worker processes on this machine (joblib,
submitit_local) or on other machines (SLURM), so each job appends JSON lines to a ledger file
in the sweep folder, and the process that launched the sweep reads it back when the sweep
ends. Jobs on this machine stop when the sweep's process ends; jobs on a cluster belong to
the scheduler and never watch it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from bnstudy import records
from bnstudy.errors import PROG, USER_ERRORS, ConfigError, exit_with, one_line
from bnstudy.ledger import GRID_SUFFIX, LEDGER_DIR, LEDGER_ENV, append, outcomes, read_ledger
from bnstudy.preflight import check
from bnstudy.stopping import OWNER_ENV, in_slurm_job

# Launchers whose jobs run on this machine, as processes the sweep's process may outlive
# (or as itself): their jobs stop when it ends. Any other launcher's jobs run elsewhere.
LOCAL_LAUNCHERS = (
    "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
    "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
)
# The outcomes that mean "rerun the command": the run did not finish.
UNFINISHED = ("failed", "interrupted", "requeued")
# Set by the sweep's process for its jobs (inherited by worker processes): how many runs the
# sweep has and when it started, for each job's "run 3 of 8, ~10 min left" (`progress`).
SIZE_ENV = "BNSTUDY_SWEEP_SIZE"
STARTED_ENV = "BNSTUDY_SWEEP_STARTED"


@dataclass(frozen=True)
class Cell:
    """One run of a sweep: its override combination, identity and folder."""

    overrides: tuple[str, ...]
    identity: dict[str, Any]
    run_dir: Path

    @property
    def name(self) -> str:
        return self.run_dir.name


# The cells of the sweep this process runs, by override combination: planned once when the
# sweep starts, read by launchers that submit jobs (hydra_plugins/bnstudy_launcher).
_PLANNED: dict[tuple[str, ...], Cell] = {}


def combinations(params: dict[str, Any], overrides: list[str]) -> list[list[str]]:
    """Every override combination of a multirun, as Hydra's basic sweeper makes them: the
    sweeper's `params` (an experiment's grid) and the command line's `overrides`."""
    texts = [f"{k}={v}" for k, v in params.items()] + list(overrides)
    parsed = OverridesParser.create().parse_overrides(texts)
    [combos] = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return combos


def plan(config: DictConfig) -> list[Cell]:
    """Every cell of a multirun, each composed by Hydra from its override combination (so a
    group's defaults, e.g. optim=adam's lr, are the real ones) and checked as it will run:
    never the base config that the sweep's values replace. ConfigError names the cells that
    cannot run, by the overrides that tell them apart."""
    params = config.hydra.sweeper.get("params") or {}
    combos = combinations(params, config.hydra.overrides.task)
    cells, bad = [], []
    for combo in combos:
        try:
            job = compose(config.hydra.job.config_name, overrides=combo)
            ident = records.identity(check(job))
        except USER_ERRORS as e:
            bad.append((combo, one_line(e)))
            continue
        run_dir = Path(job.paths.output_root).absolute() / records.run_path(ident)
        cells.append(Cell(tuple(combo), ident, run_dir))
    if bad:
        swept = _swept_keys(combos)
        combo, error = bad[0]
        which = " ".join(o for o in combo if o.split("=", 1)[0] in swept) or "its one cell"
        raise ConfigError(
            f"{len(bad)} of {len(combos)} cells of this sweep cannot run, e.g. {which}: {error}"
        )
    return cells


def _swept_keys(combos: list[list[str]]) -> set[str]:
    """The keys whose value differs between the combinations: what names a cell."""
    values: dict[str, set[str]] = {}
    for combo in combos:
        for override in combo:
            key, _, value = override.partition("=")
            values.setdefault(key, set()).add(value)
    return {key for key, seen in values.items() if len(seen) > 1}


def planned(overrides: list[str]) -> Cell | None:
    """The cell of the running sweep with these overrides (None outside a planned sweep)."""
    return _PLANNED.get(tuple(overrides))


def runs_here(config: DictConfig) -> bool:
    """Whether the sweep's launcher runs its jobs on this machine (see LOCAL_LAUNCHERS)."""
    return OmegaConf.select(config, "hydra.launcher._target_") in LOCAL_LAUNCHERS


def on_slurm(config: DictConfig) -> bool:
    """Whether the sweep's launcher submits its jobs to SLURM (bnstudy's presets or
    hydra-submitit-launcher's own)."""
    return str(OmegaConf.select(config, "hydra.launcher._target_")).endswith("SlurmLauncher")


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
        f"sweep {verb}: {len(entries) + len(left)} runs: {', '.join(parts) or 'none'}"
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


class SweepReport(Callback):
    """Checks every cell and opens the ledger when a multirun starts; prints the report and
    sets the exit status when it ends: 0 when every run completed or diverged (a result), 1
    when any failed or did not finish (interrupted, requeued)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            # Every cell as itself, before anything is written, submitted or trained.
            cells = plan(config)
            if on_slurm(config):
                _check_slurm(config)
        except USER_ERRORS as e:
            # Exit, not raise: Hydra turns a callback's exception into a warning and goes on.
            exit_with(PROG, e)
        _PLANNED.clear()
        _PLANNED.update({cell.overrides: cell for cell in cells})
        folder = Path(config.hydra.sweep.dir) / LEDGER_DIR
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        grid = json.dumps([cell.identity for cell in cells], indent=1, default=str).encode()
        records.write_atomic(folder / f"{stem}{GRID_SUFFIX}", grid)
        ledger = folder / f"{stem}.jsonl"
        ledger.touch()
        os.environ[LEDGER_ENV] = str(ledger)
        os.environ[SIZE_ENV], os.environ[STARTED_ENV] = str(len(cells)), str(time.time())
        if runs_here(config):
            # Jobs in processes of their own (joblib, submitit_local) stop when this one ends.
            # Jobs on a cluster are the scheduler's: they must outlive the submitting shell.
            os.environ[OWNER_ENV] = str(os.getpid())

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        for key in (OWNER_ENV, SIZE_ENV, STARTED_ENV):
            os.environ.pop(key, None)
        _PLANNED.clear()
        ledger = os.environ.pop(LEDGER_ENV, None)
        if ledger is None:
            return
        lines = read_ledger(Path(ledger))
        entries = outcomes(lines)
        # This is the command's own output, after the launcher's log lines.
        print(report(entries, [e for e in lines if "submitted" in e]), flush=True)
        if any(e["status"] in UNFINISHED for e in entries):
            sys.exit(1)


def _check_slurm(config: DictConfig) -> None:
    """Refuse a cluster sweep that could not be submitted or could never run: no SLURM here,
    or a request the cluster refuses (unknown partition or account, no such node)."""
    from bnstudy import slurm

    slurm.check_tools()
    params = OmegaConf.to_container(config.hydra.launcher, resolve=True)
    assert isinstance(params, dict)
    script = slurm.submission_script(params, params["submitit_folder"])
    slurm.check_request(script, slurm.request_text(params))
