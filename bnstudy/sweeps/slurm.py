"""What bnstudy asks a SLURM cluster, with the tools every site has (sbatch, squeue, scontrol,
scancel): whether a job request can run at all (`sbatch --test-only`, before a sweep submits
anything), which pending jobs wait for a reason that never clears, and why a running job is
being stopped (cancelled, requeued, out of time). No torch here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bnstudy.errors import ConfigError

TOOLS = ("sbatch", "srun", "squeue", "scontrol", "scancel", "sacct")  # submitit needs them all


QUERY_TIMEOUT_S = 30


# Reasons a pending job gives when it can never start as asked (squeue %r): the request
# exceeds what the partition, the account or the QOS allows a job, or names nothing that
# exists. Resources, Priority, Dependency, BeginTime, ReqNodeNotAvail… clear by themselves.
NEVER_CLEARS = (
    "BadConstraints",
    "PartitionConfig",
    "PartitionNodeLimit",
    "PartitionTimeLimit",
    "InvalidAccount",
    "InvalidQOS",
    "AccountNotAllowed",
    "QOSNotAllowed",
)


# A per-job limit (QOSMaxWallDurationPerJobLimit, AssocMaxCpuPerJobLimit, …) never clears
# either: the job itself is too big for it.
_PER_JOB_LIMIT = re.compile(r"^(QOS|Assoc)Max\w*PerJob\w*$")


@dataclass(frozen=True)
class Stopped:
    """Why SLURM is stopping this job, as a run's status and the error it records."""

    status: str  # requeued or interrupted
    reason: str


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S, check=False
    )


def check_tools() -> None:
    """Refuse a SLURM sweep on a machine without SLURM's commands."""
    missing = missing_tools()
    if missing:
        raise ConfigError(
            f"hydra/launcher runs jobs on SLURM, but SLURM's {', '.join(missing)} are not on PATH "
            "here; "
            "submit from a cluster's login node (or start a local one: bash "
            "scripts/slurm_local.sh up), or use hydra/launcher=joblib on this machine"
        )


def check_request(script: str, where: str) -> None:
    """Refuse a job request (the sbatch script a sweep would submit) that SLURM would not
    accept or could never run: `sbatch --test-only` asks the controller without submitting.
    `where` names the keys the user sets (hydra.launcher.*)."""
    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="bnstudy-test-") as f:
        f.write(script)
        f.flush()
        done = _run("sbatch", "--test-only", f.name)
    if done.returncode == 0:
        return
    raise ConfigError(f"SLURM refuses the job request ({where}): {_refusal(done.stderr)}")


def _refusal(stderr: str) -> str:
    """sbatch's complaint in one line, with the key that fixes it."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    text = lines[-1] if lines else "sbatch --test-only failed"
    for prefix in ("sbatch: error:", "allocation failure:", "Batch job submission failed:"):
        text = text.removeprefix(prefix).strip()
    lowered = text.lower()
    if "account" in lowered:
        return (
            f"{text}; set hydra.launcher.account to one of yours (sacctmgr show assoc user=$USER)"
        )
    if "partition" in lowered:
        known = partitions()
        offered = f" (here: {', '.join(known)})" if known else ""
        return f"{text}; set hydra.launcher.partition to one of this cluster's{offered}"
    if "gres" in lowered or "generic resource" in lowered:
        return (
            f"{text}; this partition has no GPUs: use hydra/launcher=slurm_cpu, or choose a GPU "
            "partition with hydra.launcher.partition"
        )
    if "node configuration" in lowered or "feature" in lowered:
        return (
            f"{text}: no node has that many CPUs, that much memory or those GPUs/features; lower "
            "hydra.launcher.cpus_per_task, mem_gb or gpus_per_node, or change constraint/partition"
        )
    return text


def request_text(params: dict) -> str:
    """What a job asks for, in hydra.launcher's keys: `partition=gpu, cpus_per_task=8, …`."""
    keys = ("partition", "account", "qos", "constraint", "gpus_per_node", "cpus_per_task",
            "mem_gb", "timeout_min")  # fmt: skip
    return "hydra.launcher: " + ", ".join(
        f"{key}={params[key]}" for key in keys if params.get(key) is not None
    )


def partitions() -> list[str]:
    done = _run("sinfo", "-h", "-o", "%R")
    return sorted(set(done.stdout.split())) if done.returncode == 0 else []


def queue() -> dict[str, tuple[str, str]] | None:
    """This user's jobs that SLURM still lists: {job id: (state, reason)}; None where SLURM
    cannot be asked (no squeue here, or no answer). (All of the user's jobs: squeue refuses a
    list of ids as soon as one of them has left the queue.)"""
    import getpass

    if shutil.which("squeue") is None:
        return None
    try:
        done = _run("squeue", "-h", "-u", getpass.getuser(), "-o", "%i|%T|%r")
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        return None
    jobs = {}
    for line in done.stdout.splitlines():
        job, state, reason = (line.split("|") + ["", ""])[:3]
        jobs[job.strip()] = (state, reason)
    return jobs


def never_clears(reason: str) -> bool:
    """Whether a pending job with this reason can never start as it was asked for."""
    return reason in NEVER_CLEARS or _PER_JOB_LIMIT.match(reason) is not None


def cancel(job_ids: list[str]) -> None:
    if job_ids:
        _run("scancel", *job_ids)


def job_id() -> str | None:
    """This process's SLURM job, if it runs in one."""
    return os.environ.get("SLURM_JOB_ID")


def why_stopped() -> Stopped:
    """Why SLURM is stopping this job (it sent SIGTERM): asked of the controller, which at
    that moment counts a requeue already (Restarts) and names a time limit (Reason)."""
    job = job_id()
    fields = {}
    if job:
        done = _run("scontrol", "show", "job", job)
        fields = dict(re.findall(r"(\w+)=(\S*)", done.stdout))
    restarts = int(fields.get("Restarts", "0") or 0)
    if restarts > int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0):
        return Stopped("requeued", f"SLURM job {job} was requeued (scontrol requeue or pre-empted)")
    if fields.get("Reason") == "TimeLimit":
        return Stopped("interrupted", f"SLURM job {job} reached its time limit; rerun to resume")
    if fields.get("Reason") in ("NodeFail", "NodeDown"):
        return Stopped("interrupted", f"SLURM job {job} lost its node; rerun to resume")
    return Stopped("interrupted", f"SLURM job {job} was cancelled; rerun to resume")


# hydra.launcher keys that are bnstudy's launcher's own, not submitit's.
LAUNCHER_KEYS = ("wait",)


def make_executor(params: dict, folder: str | Path):
    """submitit's SLURM executor for hydra.launcher's keys `params`, as
    hydra-submitit-launcher makes it: max_num_timeout at init, every other key an sbatch
    parameter (slurm_ in front of the ones that are not shared by all of submitit's
    executors)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    executor = submitit.AutoExecutor(
        cluster="slurm", folder=folder, slurm_max_num_timeout=params.get("max_num_timeout", 0)
    )
    executor.update_parameters(
        **{
            key if key in shared else f"slurm_{key}": value
            for key, value in params.items()
            if key not in ("submitit_folder", "max_num_timeout", "_target_", *LAUNCHER_KEYS)
        }
    )
    return executor


def submission_script(params: dict, folder: str | Path) -> str:
    """The sbatch script a sweep's job would be submitted with (to test it first)."""
    inner = make_executor(params, folder)._executor
    return inner._make_submission_file_text(inner._submitit_command_str, "test")
