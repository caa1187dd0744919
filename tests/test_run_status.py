"""Every started run ends with a status, and no way of stopping it retrains a finished run or
resumes it wrongly."""

import csv
import math
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bnstudy import run, session
from bnstudy.errors import OutOfMemory
from bnstudy.records import RecordsError, RunFolder
from bnstudy.training.parts import build_parts, checkpoint_state, restore
from tests.helpers import REPO, TINY, make_config, run_cli
from tests.test_bad_input import assert_one_line_error, tiny_run_folder, tmpfs

CPU = torch.device("cpu")


def summary(folder: Path) -> dict[str, str]:
    with open(folder / "summary.csv", newline="") as f:
        [row] = list(csv.DictReader(f))
    return row


def epochs_on_disk(folder: Path) -> list[str]:
    with open(folder / "metrics.csv", newline="") as f:
        return [row["epoch"] for row in csv.DictReader(f)]


def test_out_of_memory_while_building_is_one_line_and_a_failed_summary(tmp_path, monkeypatch):
    def no_memory(*args, **kwargs):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: "
            "you tried to allocate 4294967296 bytes. Error code 12 (Cannot allocate memory)"
        )

    monkeypatch.setattr(session, "build_parts", no_memory)
    with pytest.raises(OutOfMemory, match=r"out of memory \(asked for 4.0 GiB\) with resnet18"):
        session.execute(make_config(*TINY), tmp_path)
    row = summary(tmp_path)
    assert row["status"] == "failed" and row["error"].startswith("out of memory (asked for 4.0")
    assert row["trainer.precision"] == "fp32"


def interrupt_after_epoch(monkeypatch, epoch: int) -> None:
    """Make the next run's `fit` act as if Ctrl-C came right after `epoch` was recorded."""
    real_fit = session.fit

    def fit(*args, on_epoch_end, **kwargs):
        def end(m):
            on_epoch_end(m)
            if m.epoch == epoch:
                raise KeyboardInterrupt

        return real_fit(*args, on_epoch_end=end, **kwargs)

    monkeypatch.setattr(session, "fit", fit)


def test_ctrl_c_is_recorded_as_interrupted_and_the_rerun_resumes(tmp_path, monkeypatch):
    cfg = make_config(*TINY, "trainer.epochs=3")
    interrupt_after_epoch(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        session.execute(cfg, tmp_path)
    assert summary(tmp_path)["status"] == "interrupted"
    assert epochs_on_disk(tmp_path) == ["1"]
    monkeypatch.undo()
    outcome = session.execute(cfg, tmp_path)
    assert outcome.status == "completed" and not outcome.skipped
    assert epochs_on_disk(tmp_path) == ["1", "2", "3"]


# Runs one TINY config in a subprocess that SIGKILLs itself at one instant of the run's end.
KILL_AT = """
import os, signal, sys
from pathlib import Path
from bnstudy import session
from bnstudy.records import RunFolder
from tests.helpers import TINY, make_config

def kill(*args):
    os.kill(os.getpid(), signal.SIGKILL)

real_write = RunFolder.write_summary

def write_unless_completed(self, ident, summary):
    if summary.status == "completed":
        kill()
    real_write(self, ident, summary)

if sys.argv[2] == "before the checkpoint is dropped":
    RunFolder.drop_checkpoint = kill
else:
    RunFolder.write_summary = write_unless_completed
session.execute(make_config(*TINY), Path(sys.argv[1]))
"""


def killed_at(folder: Path, instant: str) -> None:
    result = subprocess.run([sys.executable, "-c", KILL_AT, str(folder), instant], cwd=REPO)
    assert result.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_a_kill_before_the_checkpoint_is_dropped_does_not_retrain(tmp_path):
    killed_at(tmp_path, "before the checkpoint is dropped")
    assert summary(tmp_path)["status"] == "completed"
    assert (tmp_path / "checkpoint.pt").is_file()
    outcome = session.execute(make_config(*TINY), tmp_path)
    assert outcome.skipped and outcome.status == "completed"
    assert not (tmp_path / "checkpoint.pt").exists()  # the leftover is cleaned up


@pytest.mark.slow
def test_a_kill_between_saving_the_model_and_the_summary_does_not_retrain(tmp_path, monkeypatch):
    killed_at(tmp_path, "before the summary says completed")
    assert summary(tmp_path)["status"] == "running"
    assert (tmp_path / "model.pt").is_file() and (tmp_path / "checkpoint.pt").is_file()
    trained = []
    monkeypatch.setattr(session, "fit", lambda *a, **k: trained.append(k["start_epoch"]))
    assert session.execute(make_config(*TINY), tmp_path).status == "completed"
    assert trained == [3]  # resumed after the last epoch: nothing left to train
    assert epochs_on_disk(tmp_path) == ["1", "2"] and summary(tmp_path)["epochs_done"] == "2"
    assert not (tmp_path / "checkpoint.pt").exists()


def test_a_run_locked_by_another_process_exits_with_its_own_status(tmp_path):
    folder, _ = tiny_run_folder(tmp_path)
    with RunFolder(folder).lock() as held:
        assert held
        result = run_cli(*TINY, f"paths.output_root={tmp_path}")
    assert result.returncode == run.EXIT_LOCKED == 3
    assert "is being trained by another process" in result.stderr
    assert not (folder / "summary.csv").exists()


@pytest.mark.slow
def test_a_full_disk_ends_in_one_line_a_failed_summary_and_no_temporary(tmp_path):
    # Room for the config, logs and CSVs, not for a checkpoint (about 1.4 MB at width 8).
    with tmpfs(tmp_path / "small", "size=400k") as root:
        result = run_cli(*TINY, f"paths.output_root={root}")
        assert_one_line_error(result, "checkpoint.pt: No space left on device")
        [folder] = [p.parent for p in root.rglob("summary.csv")]
        row = summary(folder)
        assert row["status"] == "failed" and "No space left on device" in row["error"]
        assert not list(folder.glob(".*.tmp*"))


# --------------------------------------------------------------- checkpoints that don't belong


@pytest.fixture
def parts_and_state():
    parts = build_parts(make_config(*TINY), CPU)
    return parts, checkpoint_state(parts, 1)


WHERE = Path("run/checkpoint.pt")


def test_a_checkpoint_of_another_model_is_refused(parts_and_state):
    parts, _ = parts_and_state
    other = build_parts(make_config(*TINY, "model.width=16"), CPU)
    with pytest.raises(RecordsError, match="does not fit this run's model"):
        restore(parts, checkpoint_state(other, 1), 2, WHERE)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"optimizer": None}, r"not a bnstudy checkpoint \(no optimizer\)"),
        ({"epoch": 7}, r"epoch 7 is outside 0\.\.2"),
        ({"epoch": -1}, r"epoch -1 is outside 0\.\.2"),
        ({"precision": "bf16"}, "began with precision bf16 and would resume with fp32"),
        ({"device_type": "cuda"}, "began with device_type cuda and would resume with cpu"),
    ],
)
def test_a_checkpoint_that_does_not_belong_is_refused(parts_and_state, change, message):
    parts, state = parts_and_state
    state = {**state, **change}
    state = {k: v for k, v in state.items() if v is not None}
    with pytest.raises(RecordsError, match=message):
        restore(parts, state, 2, WHERE)


def test_a_checkpoint_round_trip_restores_the_next_epoch(parts_and_state):
    parts, state = parts_and_state
    assert restore(parts, state, 2, WHERE) == 2


def test_the_cosine_schedule_sets_every_epochs_learning_rate(tmp_path):
    session.execute(make_config(*TINY, "trainer.epochs=4"), tmp_path)
    with open(tmp_path / "metrics.csv", newline="") as f:
        lrs = [float(row["epoch_lr"]) for row in csv.DictReader(f)]
    # lr_e = 0.1 · (1 + cos(π·(e−1)/4)) / 2 for epochs e = 1..4
    expected = [0.1 * (1 + math.cos(math.pi * (e - 1) / 4)) / 2 for e in range(1, 5)]
    assert lrs == pytest.approx(expected, rel=1e-12)
