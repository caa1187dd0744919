"""`python -m bnstudy.evaluate RUN_DIR` and `trainer.tensorboard=true`, on real CLI runs."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from bnstudy.records import RunFolder
from tests.helpers import TINY, run_cli


def evaluate_cli(*args: str):
    return run_cli(*args, module="bnstudy.evaluate")


def _one_run(root: Path, *overrides: str) -> Path:
    result = run_cli(*TINY, f"paths.output_root={root}", *overrides)
    assert result.returncode == 0, result.stderr
    [folder] = [p.parent for p in root.rglob("summary.csv")]
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Finished runs, trained once for the module: a plain one (with TensorBoard) and two
    folded after epoch 1 (into frozen BatchNorms, the default, and into AffineLayers)."""
    root = tmp_path_factory.mktemp("runs")
    return {
        "plain": _one_run(root / "plain", "trainer.tensorboard=true"),
        "folded": _one_run(root / "folded", "norm.freeze_after=1"),
        "folded_affine": _one_run(
            root / "folded_affine", "norm.freeze_after=1", "norm.fold_into=affine"
        ),
    }


@pytest.mark.kernels
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["plain", "folded", "folded_affine"])
def test_evaluate_reproduces_the_recorded_test_accuracy_per_class(tmp_path, runs, kind):
    folder = shutil.copytree(runs[kind], tmp_path / "run")  # the summary is edited below
    recorded = float(RunFolder(folder).read_summary()["final_test_acc"])
    result = evaluate_cli(str(folder))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"test accuracy {recorded:.2f}% (summary.csv: {recorded:.2f}%): agrees" in result.stdout
    rows = [line.split() for line in result.stdout.splitlines() if line[:5].strip().isdigit()]
    assert [int(r[0]) for r in rows] == list(range(10))
    assert sum(int(r[1]) for r in rows) == 128  # debug=fast's test subset
    correct = sum(int(r[2]) for r in rows)
    assert abs(100 * correct / 128 - recorded) < 1e-6

    # A summary that no longer matches its model is reported, with exit status 1.
    path = folder / "summary.csv"
    with open(path, newline="") as f:
        [row] = list(csv.DictReader(f))
    row["final_test_acc"] = str(recorded + 5)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(row)
    changed = evaluate_cli(str(folder))
    assert changed.returncode == 1 and "DIFFERS by -5.00 points" in changed.stdout


def test_evaluate_refuses_a_folder_without_a_run(tmp_path):
    result = evaluate_cli(str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"bnstudy.evaluate: error: {tmp_path}/summary.csv: not found; give the folder of one run"
    )


@pytest.mark.slow
def test_tensorboard_holds_every_epochs_metrics_beside_the_csv(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = runs["plain"]
    board = EventAccumulator(str(folder / "tensorboard"))
    board.Reload()
    epochs = RunFolder(folder).read_metrics()
    for name in ("train_loss", "val_acc", "test_acc", "epoch_lr"):
        scalars = board.Scalars(name)
        assert [s.step for s in scalars] == [m.epoch for m in epochs]
        assert [s.value for s in scalars] == pytest.approx([getattr(m, name) for m in epochs])
    # The same run without TensorBoard is the same run: the key is not in its identity.
    assert "trainer.tensorboard" not in RunFolder(folder).read_summary()
