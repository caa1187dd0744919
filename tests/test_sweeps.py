"""Sweeps through the real CLI: grids, crash safety, failure isolation, launchers."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bnstudy import records
from bnstudy.config import preflight
from tests.helpers import REPO, TINY, cells_shown, make_config, run_cli

pytestmark = pytest.mark.slow

TIMING = {"epoch_seconds", "train_images_per_s"}


def summaries_by_folder(root: Path) -> dict[str, dict[str, str]]:
    rows = {}
    for path in root.rglob("summary.csv"):
        with open(path, newline="") as f:
            rows[path.parent.name] = next(csv.DictReader(f))
    return rows


def summaries(root: Path) -> dict[tuple[str, str], dict[str, str]]:
    """(norm, batch_size) -> summary row, for every run below root."""
    return {(r["norm.name"], r["batch_size"]): r for r in summaries_by_folder(root).values()}


def metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]


def test_a_small_grid_gives_one_run_per_cell_and_a_report(tmp_path):
    args = [
        "-m",
        *TINY,
        "trainer.epochs=1",
        "norm=batchnorm,none",
        "batch_size=32,64",
        f"paths.output_root={tmp_path}",
    ]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    rows = summaries(tmp_path)
    assert sorted(rows) == [
        ("batchnorm", "32"),
        ("batchnorm", "64"),
        ("none", "32"),
        ("none", "64"),
    ]
    assert {r["status"] for r in rows.values()} == {"completed"}
    assert "sweep finished: 4 runs: 4 completed" in result.stdout
    # Each epoch line says where the sweep stands (in the run's log and on the terminal).
    logs = {p.parent.name: p.read_text() for p in tmp_path.rglob("run.log")}
    [first] = [text for name, text in logs.items() if "-batchnorm-bs32-" in name]
    assert "| run 1 of 4 (0 done): ~" in first and " in the sweep" in first
    [last] = [text for name, text in logs.items() if "-none-bs64-" in name]
    assert "| run 4 of 4 (3 done): ~" in last
    again = run_cli(*args)
    assert again.returncode == 0
    assert "sweep finished: 4 runs: 4 completed (4 already done before this sweep)" in again.stdout

    # A run the sweep asked for but that has no folder shows as missing in the results.
    [gone] = [p.parent for p in tmp_path.rglob("summary.csv") if "-none-bs64-" in str(p)]
    shutil.rmtree(gone)
    shown = subprocess.run(
        [sys.executable, "-m", "bnstudy.results", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert shown.returncode == 0, shown.stderr
    status = shown.stdout.split("status — ")[1].splitlines()
    assert status[2].split() == ["batchnorm", "completed", "completed"]
    assert status[3].split() == ["none", "completed", "missing"]
    assert "4 runs: 3 completed, 1 missing" in shown.stdout


@pytest.mark.kernels
def test_kill_9_then_the_same_command_resumes_to_identical_numbers(tmp_path):
    args = [*TINY, "trainer.epochs=4", "data.train_subset=2048", "norm=batchnorm"]
    reference = run_cli(*args, f"paths.output_root={tmp_path / 'ref'}")
    assert reference.returncode == 0, reference.stderr
    [expected] = [p.parent for p in (tmp_path / "ref").rglob("summary.csv")]

    root = tmp_path / "crash"
    cmd = [sys.executable, "-m", "bnstudy.run", *args, f"paths.output_root={root}"]
    process = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    metrics_file = None
    while time.time() < deadline:  # wait until two epochs are on disk, then kill mid-run
        found = list(root.rglob("metrics.csv"))
        if found and len(found[0].read_text().splitlines()) >= 3:
            metrics_file = found[0]
            break
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert metrics_file is not None, "the run never wrote two epochs"
    run = metrics_file.parent
    with open(run / "summary.csv", newline="") as f:
        assert next(csv.DictReader(f))["status"] == "running"

    resumed = run_cli(*args, f"paths.output_root={root}")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    rows = metrics(run)
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]  # every epoch once
    assert rows == metrics(expected)
    assert not (run / "checkpoint.pt").exists() and (run / "model.pt").is_file()
    assert not list(run.glob(".*.tmp*"))


def test_a_diverging_cell_is_a_result_and_the_others_complete(tmp_path):
    result = run_cli(
        "-m",
        *TINY,
        "norm=none",
        "trainer.log_every=1",
        "optim.lr=0.05,1e12",
        f"paths.output_root={tmp_path}",
    )
    assert result.returncode == 0, result.stderr  # divergence is a result, not a failure
    runs = [p.parent.name for p in tmp_path.rglob("summary.csv")]
    statuses = sorted(r["status"] for r in summaries_by_folder(tmp_path).values())
    assert len(runs) == 2 and statuses == ["completed", "diverged"]
    assert "sweep finished: 2 runs: 1 completed, 1 diverged" in result.stdout


def test_a_run_that_fails_while_running_does_not_stop_the_sweep(tmp_path):
    # One cell's folder holds a damaged checkpoint (a disk error, a copy cut short): that run
    # fails when it would resume from it, the sweep goes on and reports it.
    args = [*TINY, "trainer.epochs=1", f"paths.output_root={tmp_path}"]
    damaged = tmp_path / records.run_path(preflight.resolved(make_config(*args, "norm=none")))
    damaged.mkdir(parents=True)
    (damaged / "checkpoint.pt").write_bytes(b"not a checkpoint")
    result = run_cli("-m", *args, "norm=batchnorm,none")
    assert result.returncode == 1
    assert "sweep finished: 2 runs: 1 completed, 1 failed" in result.stdout
    failed = f"failed: {damaged}: {damaged / 'checkpoint.pt'}: "
    assert failed in result.stdout and "delete it to restart the run" in result.stdout
    assert summaries(tmp_path)[("batchnorm", "64")]["status"] == "completed"
    assert summaries(tmp_path)[("none", "64")]["status"] == "failed"
    assert "rerun the same command to resume or retry the unfinished runs" in result.stdout


def test_each_cell_is_checked_as_it_runs_not_by_the_base_value_it_replaces(tmp_path):
    # 32 training images once 64 are held out: the base batch_size (64) could not run, but
    # the sweep replaces it in every cell.
    result = run_cli(
        "-m", *TINY, "trainer.epochs=1", "data.train_subset=96", "batch_size=16,32",
        f"paths.output_root={tmp_path}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "sweep finished: 2 runs: 2 completed" in result.stdout


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_launchers_run_every_cell(tmp_path, launcher):
    extra = ["hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    result = run_cli(
        "-m",
        *TINY,
        "trainer.epochs=1",
        "norm=batchnorm,affine",
        "batch_size=32,64",
        f"hydra/launcher={launcher}",
        *extra,
        f"paths.output_root={tmp_path}",
    )
    assert result.returncode == 0, result.stderr
    rows = summaries(tmp_path)
    assert len(rows) == 4 and {r["status"] for r in rows.values()} == {"completed"}
    assert "sweep finished: 4 runs: 4 completed" in result.stdout


def test_paper_grid_can_be_narrowed_on_the_command_line(tmp_path):
    result = run_cli(
        "-m",
        "experiment=paper",
        *TINY,
        "trainer.epochs=1",
        "model=resnet18",
        "norm=batchnorm,bnminus",
        "batch_size=64",
        f"paths.output_root={tmp_path}",
    )
    assert result.returncode == 0, result.stderr
    assert sorted(summaries(tmp_path)) == [("batchnorm", "64"), ("bnminus", "64")]


def results_of(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bnstudy.results", str(root)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_runs_that_differ_in_any_key_never_share_a_table_cell(tmp_path):
    result = run_cli(
        "-m",
        *TINY,
        "trainer.epochs=1",
        "data.augment=true,false",
        "optim.weight_decay=0.0005,0.05",
        f"paths.output_root={tmp_path}",
    )
    assert result.returncode == 0, result.stderr
    shown = results_of(tmp_path)
    assert shown.returncode == 0, shown.stderr
    titles = [line for line in shown.stdout.splitlines() if line.startswith("final test acc %")]
    assert len(titles) == 4, shown.stdout
    for augment, decay in [
        ("True", "0.0005"),
        ("True", "0.05"),
        ("False", "0.0005"),
        ("False", "0.05"),
    ]:
        assert (
            sum(
                f"data.augment={augment}" in t and f"optim.weight_decay={decay}" in t
                for t in titles
            )
            == 1
        )
    assert "4 runs: 4 completed" in shown.stdout and "missing" not in cells_shown(shown.stdout)


def test_a_sweep_over_optimizers_leaves_no_false_missing_run(tmp_path):
    # adam's lr is its group's default (0.001), not sgd's: the grid is composed, not guessed.
    result = run_cli(
        "-m", *TINY, "trainer.epochs=1", "optim=sgd,adam", f"paths.output_root={tmp_path}"
    )
    assert result.returncode == 0, result.stderr
    shown = results_of(tmp_path)
    assert "2 runs: 2 completed" in shown.stdout and "missing" not in cells_shown(shown.stdout), (
        shown.stdout
    )
    [grid] = (tmp_path / ".sweeps").glob("*.grid.json")
    asked = json.loads(grid.read_text())
    assert sorted((a["optim.name"], a["optim.lr"]) for a in asked) == [
        ("adam", 0.001),
        ("sgd", 0.1),
    ]


def test_the_ablation_grid_runs_at_tiny_width_and_reads_as_named_variants(tmp_path):
    result = run_cli(
        "-m",
        "experiment=ablations",
        *TINY,
        "model=resnet18",
        "batch_size=64",
        "trainer.epochs=2",
        "data.train_subset=192",
        f"paths.output_root={tmp_path}",
    )
    assert result.returncode == 0, result.stderr
    assert "sweep finished: 14 runs:" in result.stdout and "failed" not in result.stdout
    shown = results_of(tmp_path)
    assert shown.returncode == 0, shown.stderr
    table = shown.stdout.split("final test acc %")[1].split("\n\n")[0]
    for label in [
        "affine + norm.init=data",
        "affine + model.zero_init_residual=true",
        "none + model.init=lsuv",
        "none + model.zero_init_residual=true",
        "batchnorm + norm.freeze_after=1",
        "batchnorm + norm.params=scale",
        "batchnorm + norm.params=shift",
        "batchnorm + optim.norm_weight_decay=0",
        "affine + optim.norm_weight_decay=0",
        "groupnorm",
        "bnminus",
    ]:
        assert f"\n{label} " in table, (label, table)
    assert len([line for line in table.splitlines()[2:] if line.strip()]) == 14
