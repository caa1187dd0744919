import re
import shutil

import pandas as pd
import pytest
from scipy import stats

from bnstudy.analysis.asked import with_asked
from bnstudy.analysis.collect import REQUIRED, collect
from bnstudy.analysis.tables import FORMATS, _settings, accuracy_table, report, status_table
from bnstudy.records import SUMMARY_COLUMNS, RunFolder
from tests.helpers import read_table, run_cli, write_grid, write_run

VAL = [60.0, 50.0, 55.0]


@pytest.fixture
def sweep(tmp_path):
    """2 variants × 2 batch sizes × 3 seeds, with one cell short of a seed, one failed run,
    one diverged run and one still running."""
    accs = {
        ("batchnorm", 32): [90.0, 92.0, 94.0],
        ("batchnorm", 128): [80.0, 82.0, 84.0],
        ("affine", 32): [70.0, 71.0, 72.0],
        ("affine", 128): [60.0, 61.0],
    }
    for (norm, bs), finals in accs.items():
        for seed, final in enumerate(finals):
            # Validation peaks at epoch 1, the test set at epoch 2.
            write_run(tmp_path, norm, bs, seed, [final - 10, final + 1, final], val_accs=VAL)
    write_run(tmp_path, "none", 32, 0, [10.0], status="failed", error="RuntimeError: boom")
    write_run(tmp_path, "none", 32, 1, [10.0], status="diverged")
    write_run(tmp_path, "none", 128, 0, [11.0, 12.0], status="running")
    return tmp_path


def tables(root, column):
    runs, _ = collect(root)
    [(_, group)] = list(_settings(runs))
    return accuracy_table(group, column), status_table(group)


def test_collect_gathers_every_run_and_epoch(sweep):
    runs, epochs = collect(sweep)
    assert len(runs) == 14 and len(epochs) == 11 * 3 + 1 + 1 + 2
    row = runs[
        (runs["norm.name"] == "batchnorm") & (runs["batch_size"] == 32) & (runs["seed"] == 2)
    ]
    assert row["final_test_acc"].item() == 94.0
    assert row["run_dir"].item().startswith("cifar10/resnet18-w64-batchnorm-bs32-seed2-")


def test_accuracy_cells_are_mean_and_95_ci_over_seeds(sweep):
    final, _ = tables(sweep, "final_test_acc")
    # 90, 92, 94: half-width t(0.975, 2)·s/√3, from scipy, not a table copied by hand.
    half = stats.t.ppf(0.975, 2) * stats.sem([90.0, 92.0, 94.0])
    assert f"{half:.2f}" == "4.97"
    assert final.loc["batchnorm", "bs 32"] == "92.00 ± 4.97 (n=3)"
    assert final.loc["batchnorm", "bs 128"] == "82.00 ± 4.97 (n=3)"
    assert final.loc["affine", "bs 128"] == "60.50 ± 6.35 (n=2; missing 1/3)"


def test_the_best_epoch_is_chosen_on_validation_not_on_test(sweep):
    at_best_val, _ = tables(sweep, "test_acc_at_best_val")
    # Epoch 1 (val 60) holds final − 10; the best test epoch (final + 1) is never chosen.
    assert at_best_val.loc["batchnorm", "bs 32"] == "82.00 ± 4.97 (n=3)"
    runs, _ = collect(sweep)
    assert set(runs["best_val_epoch"].dropna()) == {1}
    assert "best_test_acc" not in runs.columns
    text = report(runs)
    assert "test acc % at the best validation epoch" in text


def test_cells_without_completed_runs_show_their_status(sweep):
    final, status = tables(sweep, "final_test_acc")
    assert final.loc["none", "bs 32"] == "diverged 1/3; failed 1/3; missing 1/3"
    # "running", but no process holds it
    assert final.loc["none", "bs 128"] == "interrupted 1/3; missing 2/3"
    assert status.loc["affine", "bs 128"] == "2 completed, 1 missing"
    assert status.loc["none", "bs 32"] == "1 diverged, 1 failed, 1 missing"
    assert status.loc["batchnorm", "bs 32"] == "3 completed"


def test_report_lists_failed_runs_and_counts(sweep):
    runs, _ = collect(sweep)
    text = report(runs)
    assert "14 runs: 11 completed, 1 diverged, 1 failed, 1 interrupted" in text
    assert "failed: cifar10/resnet18-w64-none-bs32-seed0-" in text and "RuntimeError: boom" in text


def test_a_running_run_whose_process_holds_the_lock_shows_as_running(tmp_path):
    path = write_run(tmp_path, "batchnorm", 32, 0, [50.0], status="running")
    with RunFolder(path).lock():
        runs, _ = collect(tmp_path)
    assert runs["status"].tolist() == ["running"]


def test_a_grid_cell_with_no_run_at_all_is_missing(tmp_path):
    write_run(tmp_path, "batchnorm", 32, 0, [50.0])
    write_run(tmp_path, "affine", 64, 0, [40.0])
    final, status = tables(tmp_path, "final_test_acc")
    assert final.loc["batchnorm", "bs 64"] == "missing 1/1"
    assert status.loc["affine", "bs 32"] == "missing"


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_carries_the_same_cells(sweep, fmt):
    runs, _ = collect(sweep)
    text = report(runs, fmt)
    assert "92.00 ± 4.97 (n=3)" in text or "92.00 $\\pm$ 4.97 (n=3)" in text
    if fmt == "markdown":
        row = r"\| batchnorm +\| 92\.00 ± 4\.97 \(n=3\) +\| 82\.00 ± 4\.97 \(n=3\) +\|"
        assert re.search(row, text)
    if fmt == "latex":
        assert "\\begin{tabular}{lrr}" in text and "batchnorm & 92.00 $\\pm$ 4.97 (n=3)" in text
    if fmt == "csv":
        block = text.split("\n\n")[0].split("\n", 1)[1]
        table = pd.read_csv(pd.io.common.StringIO(block), index_col=0)
        assert table.loc["affine", "bs 32"] == "71.00 ± 2.48 (n=3)"


def run_results(*args):
    return run_cli(*map(str, args), module="bnstudy.results")


def test_cli_writes_tidy_tables_and_figures(sweep):
    result = run_results(sweep, "--plot")
    assert result.returncode == 0, result.stderr
    runs = pd.read_csv(sweep / "runs.csv")
    epochs = pd.read_csv(sweep / "epochs.csv")
    assert len(runs) == 14 and len(epochs) == 37
    assert set(epochs.columns) >= {"run_id", "norm.name", "batch_size", "seed", "epoch", "test_acc"}
    figures = sorted(p.name.split("-")[0] for p in sweep.glob("*.png"))
    assert figures == ["curves", "final_vs_batch_size", "heatmap"]
    for png in sweep.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "92.00 ± 4.97 (n=3)" in result.stdout


@pytest.mark.parametrize("make", ["nothing", "empty"])
def test_cli_refuses_a_wrong_path_or_a_folder_without_runs(tmp_path, make):
    target = tmp_path / "missing" if make == "nothing" else tmp_path
    result = run_results(target)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnstudy.results: error:")
    assert str(target) in lines[0]


def test_damaged_records_are_reported_by_path_and_left_out(sweep):
    garbage = sweep / "cifar10" / "garbage"
    garbage.mkdir()
    (garbage / "summary.csv").write_bytes(b"\x00\x17PK garbage,\n\xff\xfe")
    header_only = sweep / "cifar10" / "header-only"
    header_only.mkdir()
    (header_only / "summary.csv").write_text(",".join((*REQUIRED, *SUMMARY_COLUMNS)) + "\n")
    [good] = [p for p in sweep.rglob("metrics.csv") if "affine-bs128-seed1" in str(p)]
    lines = good.read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 3)[0] + ",oops"  # a row cut short by a crash of the disk
    good.write_text("\n".join(lines) + "\n")

    result = run_results(sweep)
    assert result.returncode == 0, result.stderr
    warnings = result.stderr.strip().splitlines()
    assert len(warnings) == 3, result.stderr
    assert all(w.startswith("bnstudy.results: warning: ") for w in warnings)
    assert f"{garbage / 'summary.csv'}: " in result.stderr
    assert f"{header_only / 'summary.csv'}: header only" in result.stderr
    assert f"{good}: line 3 has" in result.stderr
    runs = pd.read_csv(sweep / "runs.csv")
    epochs = pd.read_csv(sweep / "epochs.csv")
    assert len(runs) == 14 and len(epochs) == 37 - 3  # the damaged run's three epochs left out
    assert "14 runs:" in result.stdout


def test_two_folders_of_one_run_are_counted_once_with_a_warning(tmp_path):
    first = write_run(tmp_path / "a", "batchnorm", 32, 0, [50.0, 60.0, 70.0])
    copy = tmp_path / "b" / first.relative_to(tmp_path / "a")
    shutil.copytree(first, copy)
    warnings = []
    runs, epochs = collect(tmp_path, warn=warnings.append)
    assert len(runs) == 1 and len(epochs) == 3
    [warning] = warnings
    assert (
        str(first.relative_to(tmp_path)) in warning and str(copy.relative_to(tmp_path)) in warning
    )
    assert "hold the same run" in warning


def test_a_run_folder_from_before_full_identities_is_left_out_with_a_note(tmp_path):
    write_run(tmp_path, "batchnorm", 32, 0, [50.0])
    old = tmp_path / "cifar10" / "resnet18-w64-batchnorm-bs32-seed0-1a2b3c4d"
    old.mkdir(parents=True)
    (old / "summary.csv").write_text(
        "run_id,dataset,model,width,norm,batch_size,seed,optimizer,lr,epochs,status\n"
        "1a2b3c4d,cifar10,resnet18,64,batchnorm,32,0,sgd,0.1,3,completed\n"
    )
    warnings = []
    runs, _ = collect(tmp_path, warn=warnings.append)
    assert len(runs) == 1
    [warning] = warnings
    assert warning.startswith(f"{old / 'summary.csv'}: written by a bnstudy before full run")
    assert "rerun its config" in warning


def test_a_cell_with_one_seed_says_so(tmp_path):
    write_run(tmp_path, "batchnorm", 32, 0, [50.0, 60.0, 70.0])
    final, _ = tables(tmp_path, "final_test_acc")
    assert final.loc["batchnorm", "bs 32"] == "70.00 (1 seed)"


# ------------------------------------------------------------------ divergence is a result


@pytest.fixture
def outcomes(tmp_path):
    """One table, three seeds asked per cell at batch size 32: batchnorm completed; affine
    with one seed diverged; none diverged at every seed; bnminus with one seed completed, one
    interrupted (its summary says running, no process holds it) and one the sweep asked for
    that never started; groupnorm with one seed diverged by the number format."""
    for seed, acc in enumerate([70.0, 72.0, 74.0]):
        write_run(tmp_path, "batchnorm", 32, seed, [acc - 5, acc])
    write_run(tmp_path, "affine", 32, 0, [50.0, 60.0])
    write_run(tmp_path, "affine", 32, 1, [55.0, 64.0])
    write_run(tmp_path, "affine", 32, 2, [20.0], status="diverged")
    for seed in range(3):
        write_run(tmp_path, "none", 32, seed, [10.0], status="diverged")
    write_run(tmp_path, "bnminus", 32, 0, [45.0, 50.0])
    write_run(tmp_path, "bnminus", 32, 1, [30.0], status="running")
    write_grid(tmp_path, [("bnminus", 32, 2)])
    write_run(tmp_path, "groupnorm", 32, 0, [60.0, 66.0])
    write_run(tmp_path, "groupnorm", 32, 1, [61.0, 68.0])
    write_run(tmp_path, "groupnorm", 32, 2, [62.0], status="diverged", reason="number format")
    return tmp_path


def t_half(values: list[float]) -> float:
    return stats.t.ppf(0.975, len(values) - 1) * stats.sem(values)


# By hand: mean and t-interval of the completed seeds, then the other seeds' outcomes out of 3.
OUTCOME_CELLS = {
    "batchnorm": f"72.00 ± {t_half([70, 72, 74]):.2f} (n=3)",
    "affine": f"62.00 ± {t_half([60, 64]):.2f} (n=2; diverged 1/3)",
    "bnminus": "50.00 (1 seed; interrupted 1/3; missing 1/3)",
    "groupnorm": f"67.00 ± {t_half([66, 68]):.2f} (n=2; diverged (number format) 1/3)",
    "none": "diverged 3/3",
}
OUTCOME_TITLE = (
    "final test acc %, mean ± 95% t-CI over the completed seeds (n); diverged k/N: k of the "
    "cell's N seeds diverged (so for missing, failed, …) — cifar10 · resnet18 (model.width=64, "
    "optim.name=sgd, optim.lr=0.1, trainer.epochs=3, data.val_size=5000)"
)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_cell_counts_its_completed_and_diverged_seeds_in_every_format(outcomes, fmt):
    result = run_results(outcomes, "--format", fmt)
    assert result.returncode == 0, result.stderr
    title, rows = read_table(result.stdout, fmt)
    assert rows == {variant: [cell] for variant, cell in OUTCOME_CELLS.items()}
    assert title == OUTCOME_TITLE
    # No key that no run sets (optim.clip_grad_norm is unset in the runs and in the grid).
    assert "clip_grad_norm" not in result.stdout


def test_the_status_table_and_the_summary_count_the_same_outcomes(outcomes):
    runs, _ = collect(outcomes)
    asked = with_asked(outcomes, runs)
    [(_, group)] = list(_settings(asked))
    status = status_table(group)
    assert status.loc["bnminus", "bs 32"] == "1 completed, 1 interrupted, 1 missing"
    assert status.loc["groupnorm", "bs 32"] == "2 completed, 1 diverged (number format)"
    assert status.loc["none", "bs 32"] == "3 diverged"
    text = report(asked)
    assert (
        "15 runs: 8 completed, 4 diverged, 1 diverged (number format), 1 interrupted, 1 missing"
        in text
    )
    assert "diverged (number format): cifar10/resnet18-w64-groupnorm-bs32-seed2-" in text


def test_a_tuned_grid_is_one_table_whose_cells_say_their_own_lr(tmp_path):
    # A tuned grid: each cell at its own lr (batchnorm 0.1; affine 0.05 at bs 32, 0.2 at 128).
    lrs = {("batchnorm", 32): 0.1, ("batchnorm", 128): 0.1, ("affine", 32): 0.05}
    lrs[("affine", 128)] = 0.2
    for (norm, bs), lr in lrs.items():
        for seed, acc in enumerate([60.0, 62.0]):
            write_run(tmp_path, norm, bs, seed, [acc], overrides=(f"optim.lr={lr}",))
    runs, _ = collect(tmp_path)
    [(title, group)] = list(_settings(runs))
    assert "optim.lr=per cell" in title
    final = accuracy_table(group, "final_test_acc")
    half = f"{t_half([60, 62]):.2f}"
    assert final.loc["affine", "bs 32"] == f"61.00 ± {half} (n=2; lr 0.05)"
    assert final.loc["affine", "bs 128"] == f"61.00 ± {half} (n=2; lr 0.2)"
    assert final.loc["batchnorm", "bs 32"] == f"61.00 ± {half} (n=2; lr 0.1)"
    # An lr search (several lrs in one cell) still makes one table per lr.
    write_run(tmp_path, "affine", 32, 0, [50.0], overrides=("optim.lr=0.4",))
    runs, _ = collect(tmp_path)
    assert len(list(_settings(runs))) == 4
