"""The runs a grid asked for that have no folder yet: from the sweeps' records below a folder
(read_sweeps), each as missing, or as queued while SLURM still lists its job.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from bnstudy.analysis.collect import MISSING, QUEUED, read_sweeps, warn_on_stderr, with_variant


def with_asked(
    root: Path, runs: pd.DataFrame, warn: Callable[[str], None] = warn_on_stderr
) -> pd.DataFrame:
    """`runs` and the runs a sweep below `root` asked for that have no folder yet (status
    missing or queued): everything a grid holds, done or not."""
    asked = asked_but_missing(root, runs, warn)
    if asked.empty:
        return runs
    # The grid writes unset values as None, a summary as empty (NaN): one unset value.
    return pd.concat([runs, asked.where(asked.notna(), float("nan"))], ignore_index=True)


def asked_but_missing(
    root: Path, runs: pd.DataFrame, warn: Callable[[str], None] = warn_on_stderr
) -> pd.DataFrame:
    """Runs that a sweep below `root` was asked for but that have no folder yet: status
    "queued" when the run went to SLURM as a job that has not started (and SLURM still lists
    it, where it can be asked), "missing" otherwise."""
    sweeps = read_sweeps(root, warn)
    if not sweeps.asked:
        return runs.iloc[0:0]
    wanted = pd.DataFrame(sweeps.asked).drop_duplicates("run_id")
    missing = wanted[~wanted["run_id"].isin(runs["run_id"])].reset_index(drop=True)
    states = sweeps.scheduler_states() if len(missing) else None
    status = [
        QUEUED
        if run_id in sweeps.jobs and (states is None or sweeps.jobs[run_id] in states)
        else MISSING
        for run_id in missing["run_id"]
    ]
    return with_variant(missing.assign(status=status, run_dir=""))
