"""Sweeps on a real SLURM cluster (scripts/slurm_local.sh: slurmctld, slurmd, slurmdbd with
MariaDB, munge, on this machine): submission, requeue, time limits, cancellation, a sweep
process in another pid namespace, and the one-line refusals.

They need the cluster up; scripts/test.sh (and so CI) brings it up and sets
BNSTUDY_REQUIRE_SLURM=1, which turns "no cluster" into a failure rather than a skip.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bnstudy.records import RunFolder
from tests.helpers import REPO, TINY, cells_shown, run_cli, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

CONF = Path(os.environ.get("BNSTUDY_SLURM_DIR", "/tmp/bnstudy-slurm")) / "slurm.conf"
# The CPU preset, sized for the test cluster's one 2-CPU node: two jobs at once.
SLURM = [
    "hydra/launcher=slurm_cpu",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
    "hydra.launcher.account=bnstudy",
    "hydra.launcher.timeout_min=10",
]
TIMING = {"epoch_seconds", "train_images_per_s"}


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """The local cluster's config for every SLURM command the tests (and bnstudy) run."""
    os.environ.setdefault("SLURM_CONF", str(CONF))
    up = shutil.which("sinfo") and subprocess.run(["sinfo"], capture_output=True).returncode == 0
    if not up:
        if os.environ.get("BNSTUDY_REQUIRE_SLURM"):
            pytest.fail("no SLURM cluster answers; bash scripts/slurm_local.sh up")
        pytest.skip("no SLURM cluster here (bash scripts/slurm_local.sh up, as root)")
    yield
    subprocess.run(["scancel", "-u", "root"], capture_output=True)


def start(*args: str, pid_namespace: bool = False) -> subprocess.Popen:
    """`python -m bnstudy.run ARGS` in the background (in a pid namespace of its own: as
    on a cluster's login node, its pid means nothing where the jobs run)."""
    command = [sys.executable, "-m", "bnstudy.run", *args]
    if pid_namespace:
        command = ["unshare", "--pid", "--fork", "--mount-proc", *command]
    return subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def summary(root: Path) -> dict[str, str]:
    [folder] = {p.parent for p in root.rglob("summary.csv")}
    return RunFolder(folder).read_summary()


def rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]


def ledger(root: Path) -> list[dict]:
    return [json.loads(line) for p in (root / ".sweeps").glob("*.jsonl") for line in p.open()]


def job_of(root: Path) -> str:
    [job] = {e["submitted"] for e in ledger(root) if "submitted" in e}
    return job


def squeue(job: str) -> tuple[str, str]:
    out = subprocess.run(
        ["squeue", "-h", "-j", job, "-o", "%T|%r"], capture_output=True, text=True
    ).stdout.strip()
    state, _, reason = out.partition("|")
    return state, reason


def release_when_requeued(job: str) -> None:
    """A requeued job waits about two minutes (BeginTime) before SLURM starts it again; on
    the test cluster, start it as soon as it is back in the queue."""
    wait_for(lambda: squeue(job) == ("PENDING", "BeginTime"), 150, f"job {job} requeued", 0.5)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)


def sacct_names() -> list[str]:
    out = subprocess.run(
        ["sacct", "-n", "-X", "-S", "now-1hour", "-o", "JobName%80"],
        capture_output=True,
        text=True,
    ).stdout
    return out.split()


def test_jobs_outlive_a_sweep_killed_in_another_pid_namespace_and_a_rerun_submits_nothing(
    tmp_path,
):
    args = ["-m", *SLURM, *TINY, "trainer.epochs=3", "norm=batchnorm,none"]
    sweep = start(*args, f"paths.output_root={tmp_path}", pid_namespace=True)
    wait_for(lambda: len([e for e in ledger(tmp_path) if "submitted" in e]) == 2, 120, "jobs")
    os.killpg(sweep.pid, signal.SIGKILL)  # the sweep's process, gone: the jobs are the cluster's
    sweep.wait()

    shown = run_cli(str(tmp_path), module="bnstudy.results")
    assert shown.returncode == 0, shown.stderr
    assert "interrupted" not in shown.stdout and "missing" not in cells_shown(shown.stdout), (
        shown.stdout
    )

    def done() -> bool:
        summaries = [RunFolder(p.parent).read_summary() for p in tmp_path.rglob("summary.csv")]
        return len(summaries) == 2 and all(s["status"] == "completed" for s in summaries)

    wait_for(done, 240, "both runs completed", 1)
    folders = sorted(p.parent.name for p in tmp_path.rglob("summary.csv"))
    # Each job is named after its run: model, width, variant, batch size, seed, id.
    assert set(folders) <= set(sacct_names()), (folders, sacct_names())
    assert folders[0].startswith("resnet18-w8-batchnorm-bs64-seed0-")

    again = run_cli(*args, f"paths.output_root={tmp_path}")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("(not submitted)") + again.stderr.count("(not submitted)") == 2
    assert "sweep finished: 2 runs: 2 completed (2 already done before this sweep)" in again.stdout
    assert len([e for e in ledger(tmp_path) if "submitted" in e]) == 2  # no job the second time


@pytest.mark.kernels
def test_a_requeued_job_resumes_to_the_numbers_of_an_uninterrupted_run(tmp_path):
    config = [*TINY, "trainer.epochs=40"]
    reference = run_cli(*config, f"paths.output_root={tmp_path / 'ref'}")
    assert reference.returncode == 0, reference.stderr

    root = tmp_path / "slurm"
    sweep = start("-m", *SLURM, *config, f"paths.output_root={root}")
    wait_for(lambda: any(root.rglob("checkpoint.pt")), 120, "a first epoch", 0.2)
    job = job_of(root)
    subprocess.run(["scontrol", "requeue", job], check=True)
    wait_for(lambda: summary(root)["status"] == "requeued", 30, "the requeue recorded", 0.2)
    assert f"SLURM job {job} was requeued" in summary(root)["error"]
    release_when_requeued(job)
    output, _ = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, output
    assert "sweep finished: 1 run: 1 completed" in output
    run = next(root.rglob("summary.csv")).parent
    [expected] = [p.parent for p in (tmp_path / "ref").rglob("summary.csv")]
    assert [r["epoch"] for r in rows(run)] == [str(e) for e in range(1, 41)]  # each once
    assert rows(run) == rows(expected)
    log = "".join(p.read_text() for p in (root / ".submitit").rglob("*.out"))
    assert f"resuming {run} from epoch " in log


def test_a_time_limit_requeues_through_submitit_then_scancel_interrupts_and_a_rerun_resumes(
    tmp_path,
):
    # A run far longer than its 2-minute limit: SIGUSR2 comes 30 s before it (SLURM sends it
    # up to a minute early: 30 to 90 s in), submitit requeues the job, and it resumes.
    args = [
        "-m", *SLURM, "hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=30",
        *TINY, "trainer.epochs=100000", "trainer.diagnostics=false",
        f"paths.output_root={tmp_path}",
    ]  # fmt: skip
    sweep = start(*args)
    wait_for(lambda: any(tmp_path.rglob("summary.csv")), 120, "the job's start", 0.5)
    job = job_of(tmp_path)
    wait_for(lambda: summary(tmp_path)["status"] == "requeued", 150, "the timeout requeue", 0.5)
    first = summary(tmp_path)
    assert "time limit or pre-emption; submitit requeued it" in first["error"]
    done_before = int(first["epochs_done"])
    assert done_before >= 1  # the attempt outlasted start-up and an epoch
    release_when_requeued(job)
    run = next(tmp_path.rglob("summary.csv")).parent
    wait_for(lambda: int(summary(tmp_path)["epochs_done"]) > done_before + 2, 120, "resumed", 0.5)
    log = "".join(p.read_text() for p in (tmp_path / ".submitit").rglob("*.out"))
    # From the epoch after its last checkpoint: the last one done, or the one whose records
    # were written when the signal came (it is trained again).
    [resumed_at] = re.findall(rf"resuming {re.escape(str(run))} from epoch (\d+)", log)
    assert done_before <= int(resumed_at) <= done_before + 1

    subprocess.run(["scancel", job], check=True)
    output, _ = sweep.communicate(timeout=120)
    assert sweep.returncode == 1, output
    assert "sweep finished: 1 run: 1 interrupted" in output
    assert f"SLURM job {job} ended CANCELLED" in output
    stopped = summary(tmp_path)
    assert stopped["status"] == "interrupted" and "was cancelled" in stopped["error"]
    epochs = [int(r["epoch"]) for r in rows(run)]
    assert epochs == list(range(1, len(epochs) + 1))  # every epoch once, through the requeue

    # The same command resumes it (submitted and left: the check needs no waiting sweep).
    again = run_cli(*args, "hydra.launcher.wait=false")
    assert again.returncode == 0, again.stderr
    assert "sweep submitted: 1 run: 1 submitted" in again.stdout
    resumed = f"resuming {run} from epoch {len(epochs) + 1}"
    wait_for(
        lambda: resumed in "".join(p.read_text() for p in (tmp_path / ".submitit").rglob("*.out")),
        120,
        "the rerun's resume",
        0.5,
    )
    subprocess.run(["scancel", job_of_latest(tmp_path)], check=True)


def job_of_latest(root: Path) -> str:
    return [e["submitted"] for e in ledger(root) if "submitted" in e][-1]


def assert_one_line(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("bnstudy: error:"), result.stderr
    assert message in lines[0], lines[0]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ([], {"PATH": str(Path(sys.executable).parent)}, "SLURM's sbatch, srun"),
        (["hydra.launcher.partition=gpu"], {}, "Invalid partition name specified; set "
         "hydra.launcher.partition to one of this cluster's (here: cpu, short)"),
        (["hydra.launcher.account=nobody"], {}, "Invalid account"),
        (["hydra.launcher.cpus_per_task=64"], {}, "Requested node configuration is not available"),
        (["hydra/launcher=slurm"], {}, "Invalid generic resource (gres) specification; this "
         "partition has no GPUs: use hydra/launcher=slurm_cpu"),
    ],
)  # fmt: skip
def test_a_request_the_cluster_refuses_is_one_line_before_anything_is_written(
    tmp_path, args, env, message
):
    root = tmp_path / "out"
    command = [sys.executable, "-m", "bnstudy.run", "-m", *SLURM, *args, *TINY]
    result = subprocess.run(
        [*command, f"paths.output_root={root}"],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_one_line(result, message)
    assert not root.exists()


def test_a_slurm_launcher_without_m_is_refused(tmp_path):
    result = run_cli(*SLURM, *TINY, f"paths.output_root={tmp_path / 'out'}")
    assert_one_line(result, "hydra/launcher=slurm_cpu launches the jobs of a sweep; add -m")
    assert not (tmp_path / "out").exists()


def test_a_job_that_can_never_start_stops_the_sweep_in_one_line(tmp_path):
    # Partition `short` allows 1 minute; a job asking for 10 pends forever (PartitionTimeLimit).
    result = run_cli(
        "-m", *SLURM, "hydra.launcher.partition=short", *TINY, f"paths.output_root={tmp_path}"
    )
    # SLURM gives PartitionConfig or PartitionTimeLimit as the reason.
    assert_one_line(result, "can never start as asked (pending: Partition")
    assert "cancelled this sweep's 1 pending job; fix hydra.launcher" in result.stderr
    job = job_of(tmp_path)
    assert squeue(job) == ("", "")  # cancelled, not left in the queue
