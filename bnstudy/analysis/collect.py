"""Every run below a folder as two tidy DataFrames (runs, epochs), read from the records
without importing torch. Damaged record files are reported and left out; a run reached twice
is counted once; runs a sweep asked for but never started are listed as missing.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bnstudy.records import (
    BATCH_SIZE,
    DATASET,
    EPOCH_COLUMNS,
    LAYER_COLUMNS,
    LAYERS_FILE,
    METRICS_FILE,
    MODEL,
    NORM,
    NUMBER_FORMAT,
    SEED,
    SUMMARY_COLUMNS,
    SUMMARY_FILE,
    WIDTH,
    RunFolder,
    complete_lines,
)
from bnstudy.records.ledger import GRID_SUFFIX, LEDGER_DIR, read_ledger
from bnstudy.study.controls import variant_label

# Identity columns every record has; a run's full identity is every column of its summary
# that is not a Summary field (see `identity_columns`).
REQUIRED = ("run_id", DATASET, MODEL, WIDTH, NORM, BATCH_SIZE, SEED)


# A readable name of each run's variant, from its identity (controls.variant_label): the row
# of the tables. Derived, so not an identity column.
VARIANT = "variant"


MISSING = "missing"


QUEUED = "queued"  # submitted to SLURM, not started yet


INTERRUPTED = "interrupted"  # status "running" but no process holds the run's lock


COMPLETED, DIVERGED = "completed", "diverged"


# A divergence only the number format caused (fp16/bf16) is its own outcome in every table.
FORMAT_DIVERGED = f"{DIVERGED} ({NUMBER_FORMAT})"


ENDED = (COMPLETED, DIVERGED, FORMAT_DIVERGED)  # a result; every other outcome is unfinished


# The order in which a cell names its outcomes.
OUTCOMES = (*ENDED, "failed", INTERRUPTED, "requeued", "running", QUEUED, MISSING)


class ResultsError(RuntimeError):
    """DIR cannot be summarised; the message names it and what to do."""


def warn_on_stderr(message: str) -> None:
    print(f"bnstudy.results: warning: {message}", file=sys.stderr)


def _problem(text: str, required: tuple[str, ...], one_row: bool) -> str | None:
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
    for n, row in enumerate(body, start=2):
        if len(row) != len(header):
            return f"line {n} has {len(row)} fields, the header {len(header)}"
    return None


def _concat_csvs(
    paths: list[Path],
    root: Path,
    required: tuple[str, ...],
    numeric: tuple[str, ...] = (),
    one_row: bool = False,
    warn: Callable[[str], None] = warn_on_stderr,
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
        text = complete_lines(text)  # a live run may be appending to its layers.csv
        problem = _problem(text, required, one_row)
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
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return _numbers_only(frame, numeric, root, paths[0].name if paths else "", warn)


def _numbers_only(
    frame: pd.DataFrame, numeric: tuple[str, ...], root: Path, name: str, warn: Callable
) -> pd.DataFrame:
    """Leave out, whole, every file with a value in a `numeric` column that is not a number
    (empty is fine: a value the run does not have, e.g. no validation split)."""
    bad_dirs: dict[str, str] = {}
    for column in numeric:
        if column not in frame:
            continue
        values = frame[column]
        bad = pd.to_numeric(values, errors="coerce").isna() & values.notna()
        for run_dir, value in zip(frame.loc[bad, "run_dir"], values[bad], strict=True):
            bad_dirs.setdefault(run_dir, f"{column}={value!r} is not a number")
    for run_dir, problem in bad_dirs.items():
        warn(f"{root / run_dir / name}: {problem}; left out")
    return frame[~frame["run_dir"].isin(bad_dirs)] if bad_dirs else frame


def _quote(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def collect(
    root: Path, warn: Callable[[str], None] = warn_on_stderr
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every run below `root`: (runs, one row per run; epochs, one row per run and epoch).
    Damaged record files are reported through `warn` and left out."""
    if not root.is_dir():
        raise ResultsError(f"{root} is not a folder; give the output folder of a run or sweep")
    summaries = sorted(root.rglob(SUMMARY_FILE))
    if not summaries and read_sweeps(root, warn).asked:
        # A sweep whose jobs have not started yet (queued on a cluster): nothing to collect,
        # but the grid is known (asked_but_missing).
        return pd.DataFrame(columns=[*REQUIRED, "status", "run_dir", VARIANT]), pd.DataFrame()
    if not summaries:
        raise ResultsError(
            f"no runs under {root} (no {SUMMARY_FILE} found); give paths.output_root of a run or "
            "sweep, e.g. outputs"
        )
    runs = _concat_csvs(summaries, root, (*REQUIRED, "status"), one_row=True, warn=warn)
    if runs.empty:
        raise ResultsError(f"no readable {SUMMARY_FILE} under {root}; see the warnings above")
    runs = _once_per_run(runs, warn)
    # "running" in a summary whose process is gone (killed, pre-empted) means interrupted:
    # no process holds its lock, and SLURM (if it ran there) no longer runs its job. (A
    # job's lock may not be visible from another node of a cluster; its job's state is.)
    live = runs.index[runs["status"] == "running"]
    live = [i for i in live if not RunFolder(root / runs.at[i, "run_dir"]).is_held()]
    if live:
        sweeps = read_sweeps(root, warn)
        states = sweeps.scheduler_states() or {}
        for i in live:
            job = sweeps.jobs.get(runs.at[i, "run_id"])
            if states.get(job) not in ("RUNNING", "COMPLETING"):
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
    runs = with_variant(runs.sort_values(["run_id", "run_dir"]).reset_index(drop=True))
    if not epochs.empty:  # one label per run, not per epoch row
        labels = runs.set_index("run_id")[VARIANT]
        epochs = epochs.assign(**{VARIANT: epochs["run_id"].map(labels)})
    return runs, epochs


def collect_layers(
    root: Path, runs: pd.DataFrame, warn: Callable[[str], None] = warn_on_stderr
) -> pd.DataFrame:
    """The layers.csv of every run in `runs` as one frame, with each run's variant. Only a file
    beside a summary.csv is a run's record: the gathered layers.csv that `results` writes at
    a folder's root is not read back."""
    paths = sorted(p for p in root.rglob(LAYERS_FILE) if (p.parent / SUMMARY_FILE).is_file())
    numeric = tuple(c for c in LAYER_COLUMNS if c not in ("layer", "kind"))
    # `groups` came later: a layers.csv without it is still read (its GroupNorm groups unknown).
    required = (*REQUIRED, *(c for c in LAYER_COLUMNS if c != "groups"))
    layers = _concat_csvs(paths, root, required, numeric=numeric, warn=warn)
    if layers.empty:
        return layers
    layers = layers[layers["run_dir"].isin(runs["run_dir"])]
    labels = runs.set_index("run_id")[VARIANT]
    return layers.assign(**{VARIANT: layers["run_id"].map(labels)}).reset_index(drop=True)


def with_variant(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with the VARIANT column: norm plus the controls that differ from their default."""
    labels = [variant_label(row) for row in frame.to_dict("records")]
    return frame.assign(**{VARIANT: labels})


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


def outcome(runs: pd.DataFrame) -> pd.Series:
    """Each run's status, with a divergence of the number format (Summary.diverged_reason)
    told apart from one of the optimization."""
    reason = runs["diverged_reason"] if "diverged_reason" in runs else pd.Series("", runs.index)
    by_format = (runs["status"] == DIVERGED) & (reason == NUMBER_FORMAT)
    return runs["status"].where(~by_format, FORMAT_DIVERGED)


def varies(frame: pd.DataFrame, key: str) -> bool:
    """Whether `key` takes more than one value in `frame`, every unset value (None, NaN,
    which a summary and a sweep's grid write differently) counting as one."""
    values = frame[key]
    return values.dropna().nunique() + int(values.isna().any()) > 1


def identity_columns(frame: pd.DataFrame) -> list[str]:
    """The identity columns of a runs or epochs frame: everything but the records' fields."""
    fields = {*SUMMARY_COLUMNS, *EPOCH_COLUMNS, *LAYER_COLUMNS, "run_dir", VARIANT}
    return [c for c in frame.columns if c not in fields]


@dataclass(frozen=True)
class Sweeps:
    """What the sweeps below a folder recorded (.sweeps/): the identity of every run they
    were asked for, and the SLURM job of each run that went to a cluster (by run id)."""

    asked: list[dict]
    jobs: dict[str, str]

    def scheduler_states(self) -> dict[str, str] | None:
        """SLURM's state (PENDING, RUNNING, …) of each job it still lists, by job id; None
        when no run went to SLURM or SLURM cannot be asked from here."""
        if not self.jobs:
            return None
        from bnstudy.sweeps.slurm import queue

        listed = queue()
        return None if listed is None else {job: state for job, (state, _) in listed.items()}


def read_sweeps(root: Path, warn: Callable[[str], None] = warn_on_stderr) -> Sweeps:
    """Every sweep's grid (.sweeps/*.grid.json, each override combination as Hydra composed
    it) and ledger (the jobs it submitted and saw start) below `root`."""
    asked: list[dict] = []
    jobs: dict[str, str] = {}
    for path in sorted(root.rglob(f"{LEDGER_DIR}/*")):
        try:
            if path.name.endswith(GRID_SUFFIX):
                asked += json.loads(path.read_text())
            elif path.suffix == ".jsonl":
                for entry in read_ledger(path):
                    if entry.get("started") or entry.get("submitted"):
                        asked.append(entry["identity"])
                    job = entry.get("submitted") or entry.get("job")
                    if job:  # the latest job of a run is the one that counts
                        jobs[entry["identity"]["run_id"]] = str(job)
        except (OSError, ValueError, KeyError, TypeError) as e:
            warn(f"{path}: cannot be read ({type(e).__name__}); left out")
    asked = [a for a in asked if isinstance(a, dict) and set(REQUIRED) <= set(a)]
    return Sweeps(asked, jobs)
