"""The Hydra callbacks (conf/config.yaml) that check before anything is written: a multirun's
every cell, checked as it will run, and its ledger opened (SweepReport, which also prints the
end-of-sweep report and sets the exit status); and a single run refused if it names a grid or
a folder that holds another config's run (RunFolderGuard). A callback exits rather than
raises, because Hydra turns a callback's exception into a warning and goes on.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from hydra import compose
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from bnstudy import records
from bnstudy.config.preflight import check, check_choices
from bnstudy.errors import PROG, USER_ERRORS, ConfigError, exit_with, one_line
from bnstudy.records import RunFolder
from bnstudy.records.ledger import GRID_SUFFIX, LEDGER_DIR, LEDGER_ENV, outcomes, read_ledger
from bnstudy.sweeps.grid import Cell, combinations, forget, on_slurm, remember, runs_here
from bnstudy.sweeps.report import SIZE_ENV, STARTED_ENV, UNFINISHED, report
from bnstudy.sweeps.stopping import OWNER_ENV


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
        remember(cells)
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
        forget()
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
    from bnstudy.sweeps import slurm

    slurm.check_tools()
    params = OmegaConf.to_container(config.hydra.launcher, resolve=True)
    assert isinstance(params, dict)
    script = slurm.submission_script(params, params["submitit_folder"])
    slurm.check_request(script, slurm.request_text(params))


def check_not_a_grid(config: DictConfig) -> None:
    """Refuse a single run of a config that defines a grid (experiment=paper), or that names
    a sweep's launcher (hydra/launcher=slurm): without -m, Hydra would silently train one
    cell of the grid, here, in this process."""
    task = list(config.hydra.overrides.task)
    # The user's own hydra overrides (Hydra adds hydra.mode=RUN), then the task's.
    given = [o for o in config.hydra.overrides.hydra if not o.startswith("hydra.mode=")] + task
    command = " ".join(["python -m bnstudy.run -m", *map(shlex.quote, given)])
    launcher = config.hydra.runtime.choices.get("hydra/launcher")
    if launcher not in (None, "basic"):
        raise ConfigError(
            f"hydra/launcher={launcher} launches the jobs of a sweep; add -m: {command}"
        )
    params = config.hydra.sweeper.get("params") or {}
    given = {o.split("=", 1)[0].lstrip("+~") for o in task}
    # The grid's dimensions of several values that the command line does not fix to one:
    # with all of them given one value, the command names one cell, and runs it.
    open_dims = [k for k, v in params.items() if "," in str(v) and k not in given]
    if open_dims:
        asked = next((t for t in task if t.startswith("experiment=")), "this config")
        raise ConfigError(
            f"{asked} is a grid over {', '.join(open_dims)}; run it as a sweep: {command} (or "
            f"give {', '.join(open_dims)} one value{' each' if len(open_dims) > 1 else ''} to "
            "run one cell)"
        )


class RunFolderGuard(Callback):
    """Before Hydra makes a single run's folder and writes `.hydra/` into it: run the checks,
    and refuse a folder (e.g. a hand-set hydra.run.dir) that holds another config's run."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_not_a_grid(config)
            check_choices(config.hydra.runtime.choices)
            run_id = records.run_id(check(config))
            RunFolder(Path(str(config.hydra.run.dir))).check_owner(run_id)
        except USER_ERRORS as e:
            # Exit, not raise: Hydra turns a callback's exception into a warning and goes on.
            exit_with(PROG, e)
