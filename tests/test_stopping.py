"""Every process bnstudy starts ends with its parent or when interrupted, within seconds, even
when stuck in native code; an interrupted run is recorded and resumes
(bnstudy/sweeps/stopping.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bnstudy.records import RunFolder
from bnstudy.sweeps.stopping import GRACE_SECONDS
from tests.helpers import TINY, wait_for

PYTHON = sys.executable


def _gone(pid: int) -> bool:
    """No such process, or a zombie waiting to be reaped (it runs no more)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def _descendants(pid: int) -> list[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent]
        found += children
        frontier += children
    return found


def test_a_process_stuck_in_native_code_stops_within_seconds_of_ctrl_c(tmp_path):
    flag = tmp_path / "recorded"
    script = textwrap.dedent(f"""
        import ctypes, signal
        from pathlib import Path
        from bnstudy.sweeps.stopping import stops_within_seconds
        with stops_within_seconds() as stop:
            stop.on_stuck = lambda: Path({str(flag)!r}).write_text("interrupted")
            # A native call that never returns, in a thread where no Python handler runs.
            signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGINT, signal.SIGTERM}})
            print("stuck", flush=True)
            ctypes.CDLL(None).pause()
    """)
    process = subprocess.Popen([PYTHON, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "stuck"
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    started = time.monotonic()
    assert process.wait(timeout=GRACE_SECONDS + 10) == 130
    assert time.monotonic() - started < GRACE_SECONDS + 3
    assert flag.read_text() == "interrupted"  # the run's record is written on the way out


def _start_run(out: Path, *extra: str) -> subprocess.Popen:
    args = [*TINY, f"paths.output_root={out}", "trainer.epochs=10", *extra]
    return subprocess.Popen(
        [PYTHON, "-m", "bnstudy.run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # signals reach only what the test sends them to
    )


def _first_epoch_done(out: Path) -> bool:
    """A checkpoint exists: the run has something to resume from."""
    return any(out.rglob("checkpoint.pt"))


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_run_ends_in_seconds_is_interrupted_and_the_rerun_resumes(tmp_path, signum):
    process = _start_run(tmp_path)
    wait_for(lambda: _first_epoch_done(tmp_path), 120, "a first epoch")
    process.send_signal(signum)
    started = time.monotonic()
    output, _ = process.communicate(timeout=30)
    assert time.monotonic() - started < GRACE_SECONDS, output
    assert process.returncode == 130, output
    assert _descendants(process.pid) == []
    [folder] = [p.parent for p in tmp_path.rglob("summary.csv")]
    summary = RunFolder(folder).read_summary()
    assert summary["status"] == "interrupted"
    assert 1 <= int(summary["epochs_done"]) < 10

    rerun = _start_run(tmp_path)
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output
    assert f"resuming {folder} from epoch " in output
    assert "epoch 1/10 " not in output  # nothing before the checkpoint is trained again
    epochs = [m.epoch for m in RunFolder(folder).read_metrics()]
    assert epochs == list(range(1, 11))


@pytest.mark.slow
def test_a_sweep_whose_launcher_is_killed_leaves_no_job_running(tmp_path):
    """submitit_local's jobs ignore SIGTERM and outlive their launcher; bnstudy's stop when
    the sweep's process is gone, and record the run as interrupted."""
    process = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "bnstudy.run",
            "-m",
            "hydra/launcher=submitit_local",
            *TINY,
            f"paths.output_root={tmp_path}",
            "trainer.epochs=200",
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_for(lambda: _first_epoch_done(tmp_path), 180, "the job's first epoch")
    jobs = _descendants(process.pid)
    assert jobs, "submitit_local runs its job in processes of its own"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    wait_for(lambda: all(_gone(p) for p in jobs), GRACE_SECONDS + 10, "the jobs' end")
    [folder] = [p.parent for p in tmp_path.rglob("summary.csv")]
    assert RunFolder(folder).read_summary()["status"] == "interrupted"
    assert not RunFolder(folder).is_held()


def _start_bench() -> subprocess.Popen:
    return subprocess.Popen(
        [PYTHON, "-m", "bnstudy.bench", *TINY, "--steps", "100000", "--no-reference"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl-c", "kill"])
def test_a_stopped_benchmark_leaves_no_worker(how):
    process = _start_bench()
    wait_for(lambda: _descendants(process.pid), 60, "the measurement process")
    time.sleep(3)  # measuring by now
    workers = _descendants(process.pid)
    if how == "ctrl-c":
        process.send_signal(signal.SIGINT)  # the parent alone: its worker must still end
        output, _ = process.communicate(timeout=GRACE_SECONDS + 10)
        assert process.returncode == 130, output
        assert "interrupted" in output
    else:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    wait_for(lambda: all(_gone(p) for p in workers), GRACE_SECONDS + 5, "the workers' end")
