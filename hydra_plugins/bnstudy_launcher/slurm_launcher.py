"""bnstudy's SLURM launcher (hydra/launcher=slurm and slurm_cpu): hydra-submitit-launcher's,
with what a study's grid needs on a real cluster (README: "On a SLURM cluster"):

- one job per run, named after its run folder (model, width, variant, batch size, seed, id),
  and no job for a run that has already finished (a rerun submits only what is left);
- `hydra.launcher.wait=false` returns once the jobs are submitted: they belong to the
  cluster, and `python -m bnstudy.results DIR` shows where the grid stands;
- waiting (the default), a job that pends for a reason that can never clear stops the sweep
  in one line, and a job that ends without its run's outcome (cancelled, its node lost) is
  reported as such instead of a traceback.

Hydra finds launchers in the hydra_plugins namespace; `register` also names this one to it
(Plugins.register), since Hydra's scan does not see into an editable install of bnstudy.
Nothing heavy is imported at module level: Hydra imports every plugin on every start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

log = logging.getLogger(__name__)

POLL_S = 10.0  # between looks at the queue while waiting (one squeue, one sacct)
PROGRESS_S = 60.0  # between progress lines in the log
# How a job that ended without its run's outcome is recorded, by its final SLURM state.
_ENDED = {
    "CANCELLED": ("interrupted", "cancelled"),
    "TIMEOUT": ("interrupted", "out of time, and not requeued (max_num_timeout reached)"),
    "NODE_FAIL": ("interrupted", "its node failed"),
    "PREEMPTED": ("interrupted", "pre-empted, and not requeued"),
    "BOOT_FAIL": ("interrupted", "its node did not boot"),
    "DEADLINE": ("interrupted", "past its deadline"),
    "OUT_OF_MEMORY": ("failed", "out of memory: raise hydra.launcher.mem_gb"),
}


@dataclass
class BnstudySlurmConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.bnstudy_launcher.slurm_launcher.BnstudySlurmLauncher"
    # true: wait for every job and end with the sweep's report and exit status; false:
    # return once the jobs are submitted (they do not need this process).
    wait: bool = True


class BnstudySlurmLauncher(SlurmLauncher):
    def __init__(self, wait: bool = True, **params: Any) -> None:
        super().__init__(**params)
        self.wait = wait

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from bnstudy.records import FINISHED, RunFolder
        from bnstudy.sweeps import grid, report, slurm

        assert self.config is not None
        executor = slurm.make_executor(self.params, self.params["submitit_folder"])
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        returns: dict[int, JobReturn] = {}
        jobs: dict[int, tuple[Any, Any]] = {}  # index -> (cell, submitit job)
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            cell = grid.planned(list(overrides))
            assert cell is not None, "every cell is planned when the sweep starts"
            summary = RunFolder(cell.run_dir).read_summary()
            if summary is not None and summary["status"] in FINISHED:
                log.info(f"\t#{idx} : already {summary['status']}: {cell.run_dir} (not submitted)")
                report.record_job(summary["status"], cell.run_dir, skipped=True)
                returns[idx] = _job_return(overrides, summary["status"])
                continue
            executor.update_parameters(name=cell.name)
            job = executor.submit(
                self, list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}",
                Singleton.get_state(),
            )  # fmt: skip
            report.record_submitted(cell, job.job_id)
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))} -> job {job.job_id}")
            jobs[idx] = (cell, job)
        if self.wait:
            returns.update(self._wait_for(jobs))
        else:
            returns.update({i: _job_return(job_overrides[i - initial_job_idx], "submitted")
                            for i in jobs})  # fmt: skip
        return [returns[i] for i in sorted(returns)]

    def _wait_for(self, jobs: dict[int, tuple[Any, Any]]) -> dict[int, JobReturn]:
        """Each job's outcome once it has ended. A job pending for a reason that never
        clears cancels the sweep's pending jobs and stops it with a one-line error."""
        from submitit.core.utils import UncompletedJobError
        from submitit.slurm.slurm import SlurmJob

        from bnstudy.errors import ConfigError
        from bnstudy.sweeps import report, slurm

        returns: dict[int, JobReturn] = {}
        waiting = dict(jobs)
        said = time.monotonic()
        while waiting:
            SlurmJob.watcher.update()  # one sacct for every job of the sweep
            for idx, (cell, job) in list(waiting.items()):
                if not job.done():
                    continue
                del waiting[idx]
                try:
                    returns[idx] = job.results()[0]
                except UncompletedJobError:
                    status, why = _ENDED.get(job.state.split()[0], ("interrupted", job.state))
                    error = f"SLURM job {job.job_id} ended {job.state}: {why}"
                    log.warning(f"{cell.run_dir}: {error}")
                    report.record_job(status, cell.run_dir, error)
                    returns[idx] = _job_return(cell.overrides, status)
            if not waiting:
                break
            queue = slurm.queue() or {}
            ids = {job.job_id: cell for cell, job in waiting.values()}
            stuck = {j: r for j, (state, r) in queue.items() if j in ids and slurm.never_clears(r)}
            if stuck:
                pending = [j for j in ids if queue.get(j, ("",))[0] == "PENDING"]
                slurm.cancel(pending)
                job, reason = next(iter(stuck.items()))
                jobs_text = f"{len(pending)} pending job" + ("s" if len(pending) != 1 else "")
                raise ConfigError(
                    f"SLURM job {job} ({ids[job].name}) can never start as asked (pending: "
                    f"{reason}); cancelled this sweep's {jobs_text}; fix hydra.launcher "
                    "(partition, timeout_min, account, qos, resources) and rerun"
                )
            if time.monotonic() - said > PROGRESS_S:
                states = [queue.get(j, ("ended", ""))[0].lower() for j in ids]
                counts = ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states)))
                log.info(f"SLURM: {len(returns)} of {len(jobs)} jobs ended; {counts}")
                said = time.monotonic()
            time.sleep(POLL_S)
        return returns


def _job_return(overrides: Sequence[str], status: str) -> JobReturn:
    """What the sweeper is handed for a run that was not (or not wholly) run by a job: its
    outcome as the task's return value (the ledger holds the details)."""
    ret = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
    ret.return_value = status
    return ret


def register() -> None:
    """Make `hydra/launcher=slurm` (whose YAML builds on bnstudy_slurm_schema) find this
    launcher, whether or not Hydra's plugin scan saw this module."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    ConfigStore.instance().store(
        group="hydra/launcher", name="bnstudy_slurm_schema", node=BnstudySlurmConf
    )
    Plugins.instance().register(BnstudySlurmLauncher)  # Hydra's own way to add a plugin
