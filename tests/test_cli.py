"""The real CLI in a subprocess: what a user types, what lands on disk."""

import csv
from pathlib import Path

import pytest

from bnstudy.records import EPOCH_COLUMNS, SUMMARY_COLUMNS
from tests.helpers import TINY, run_cli

pytestmark = pytest.mark.slow

TIMING = {"epoch_seconds", "train_images_per_s"}


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def only_run(root: Path) -> Path:
    folders = [p.parent for p in root.rglob("summary.csv")]
    assert len(folders) == 1, folders
    return folders[0]


@pytest.mark.kernels
def test_one_run_writes_both_csvs_with_the_right_rows(tmp_path):
    result = run_cli(*TINY, "norm=bnminus", "batch_size=32", f"paths.output_root={tmp_path}")
    assert result.returncode == 0, result.stderr
    run = only_run(tmp_path)
    assert run.parent.name == "fashion_mnist"
    assert run.name.startswith("resnet18-w8-bnminus-bs32-seed0-")
    metrics = read(run / "metrics.csv")
    identity = tuple(metrics[0])[: -len(EPOCH_COLUMNS)]
    assert tuple(metrics[0])[len(identity) :] == EPOCH_COLUMNS
    # Every value that can change the numbers identifies the run, resolved (never "auto").
    assert identity[0] == "run_id" and run.name.endswith(metrics[0]["run_id"])
    assert {
        "optim.weight_decay",
        "optim.norm_weight_decay",
        "optim.momentum",
        "optim.schedule",
        "norm.eps",
        "norm.momentum",
        "data.augment",
        "data.train_subset",
        "data.val_size",
        "data.split_seed",
        "trainer.precision",
    } <= set(identity)
    assert not {"paths.output_root", "device.name", "trainer.progress"} & set(identity)
    assert metrics[0]["trainer.precision"] == "fp32"
    assert [m["epoch"] for m in metrics] == ["1", "2"]
    assert {m["norm.name"] for m in metrics} == {"bnminus"}
    assert {m["batch_size"] for m in metrics} == {"32"}
    assert float(metrics[0]["epoch_lr"]) == 0.1 and float(metrics[1]["epoch_lr"]) == 0.05
    for m in metrics:
        assert 0 <= float(m["test_acc"]) <= 100 and float(m["train_images_per_s"]) > 0
    [summary] = read(run / "summary.csv")
    assert tuple(summary) == (*identity, *SUMMARY_COLUMNS)
    assert {k: summary[k] for k in identity} == {k: metrics[0][k] for k in identity}
    assert summary["status"] == "completed" and summary["epochs_done"] == "2"
    assert summary["final_test_acc"] == metrics[-1]["test_acc"]
    assert all(0 <= float(m["val_acc"]) <= 100 for m in metrics)
    best = max(metrics, key=lambda m: float(m["val_acc"]))  # the first of equals, as max
    assert (summary["best_val_epoch"], summary["test_acc_at_best_val"]) == (
        best["epoch"],
        best["test_acc"],
    )
    assert summary["n_norm_params"] == "0" and int(summary["n_params"]) > 0
    assert summary["device"] == "cpu" and summary["torch_version"]
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "model.pt").is_file()
    assert not (run / "checkpoint.pt").exists()


def test_rerun_of_a_completed_config_is_a_no_op(tmp_path):
    args = [*TINY, "trainer.epochs=1", f"paths.output_root={tmp_path}"]
    assert run_cli(*args).returncode == 0
    run = only_run(tmp_path)
    before = {p.name: p.read_bytes() for p in run.glob("*.csv")}
    again = run_cli(*args)
    assert again.returncode == 0
    assert "already completed" in again.stdout + again.stderr
    assert {p.name: p.read_bytes() for p in run.glob("*.csv")} == before
    # A different config gets a folder of its own, next to the first.
    assert run_cli(*args, "optim.lr=0.05").returncode == 0
    assert len(list(tmp_path.rglob("summary.csv"))) == 2


@pytest.mark.kernels
def test_same_config_and_seed_on_cpu_give_identical_numbers(tmp_path):
    runs = []
    for name in ("a", "b"):
        result = run_cli(*TINY, "norm=batchnorm", f"paths.output_root={tmp_path / name}")
        assert result.returncode == 0, result.stderr
        runs.append(read(only_run(tmp_path / name) / "metrics.csv"))
    strip = [[{k: v for k, v in row.items() if k not in TIMING} for row in run] for run in runs]
    assert strip[0] == strip[1]
    assert float(runs[0][0]["train_loss"]) > 0


def test_divergence_is_recorded_not_crashed(tmp_path):
    result = run_cli(
        *TINY, "norm=none", "optim.lr=1e12", "trainer.log_every=1", f"paths.output_root={tmp_path}"
    )
    assert result.returncode == 0, result.stderr
    [summary] = read(only_run(tmp_path) / "summary.csv")
    assert summary["status"] == "diverged"
    assert summary["diverged_epoch"] == "1" and "non-finite" in summary["error"]


@pytest.mark.kernels
def test_cifar10_from_files_in_the_official_format(tmp_path, tiny_cifar):
    result = run_cli(
        "dataset=cifar10",
        f"dataset.root={tiny_cifar}",
        "dataset.download=false",
        "model.width=4",
        "device=cpu",
        "trainer.epochs=1",
        "batch_size=8",
        "data.val_size=8",
        "norm=affine",
        f"paths.output_root={tmp_path / 'out'}",
    )
    assert result.returncode == 0, result.stderr
    [summary] = read(only_run(tmp_path / "out") / "summary.csv")
    assert (summary["dataset.name"], summary["status"]) == ("cifar10", "completed")
    assert int(summary["n_norm_params"]) > 0


def test_works_from_another_directory(tmp_path):
    result = run_cli(*TINY, "trainer.epochs=1", "paths.output_root=rel", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert only_run(tmp_path / "rel").is_dir()


def test_an_experiment_with_every_swept_key_given_one_value_is_one_run(tmp_path):
    # experiment=quickstart sweeps norm and batch_size; with one value each it names one cell.
    result = run_cli(
        "experiment=quickstart", *TINY, "norm=none", "batch_size=64", "data.val_size=0",
        f"paths.output_root={tmp_path}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    run = only_run(tmp_path)
    assert run.name.startswith("resnet18-w8-none-bs64-seed0-")
    # No validation split: its accuracy is left out of the epoch lines, not logged as nan.
    epochs = [line for line in (run / "run.log").read_text().splitlines() if " - epoch " in line]
    assert len(epochs) == 2 and all("val acc" not in line and "nan" not in line for line in epochs)
    assert all(" test loss " in line for line in epochs)
