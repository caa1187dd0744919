"""A fair comparison: stabilizers as keys, the lr chosen on validation, confidence intervals
from scipy.stats.t, paired differences to batchnorm, and the tuned paper grid."""

import math
import subprocess

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from scipy import stats

from bnstudy.analysis.asked import with_asked
from bnstudy.analysis.collect import VARIANT, collect
from bnstudy.analysis.tuning import (
    ALL_DIVERGED,
    CHOSEN,
    UNFINISHED,
    cell_choices,
    chosen_lrs,
    tuned_table,
)
from bnstudy.config.checks import validate
from bnstudy.errors import ConfigError, one_line
from bnstudy.training.loop import train_step
from bnstudy.training.optim import make_schedule
from bnstudy.training.parts import build_parts
from tests.helpers import CONF, TINY, make_config, read_table, run_cli, write_grid, write_run

CPU = torch.device("cpu")


def lrs_per_epoch(*overrides: str, epochs: int = 6) -> list[float]:
    cfg = make_config(*TINY, f"trainer.epochs={epochs}", *overrides)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.optim.lr)
    schedule = make_schedule(optimizer, cfg.optim, epochs)
    seen = []
    for _ in range(epochs):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return seen


def test_warm_up_rises_linearly_from_lr_over_factor_then_the_cosine_runs():
    lrs = lrs_per_epoch("optim.warmup_epochs=2", "optim.warmup_factor=10")
    cosine = [0.1 * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(4)]  # over epochs 3..6
    assert lrs == pytest.approx([0.01, 0.055, *cosine], rel=1e-9)
    assert lrs_per_epoch() == pytest.approx(
        [0.1 * (1 + math.cos(math.pi * k / 6)) / 2 for k in range(6)]
    )


@pytest.mark.parametrize(
    ("scaling", "factor"), [("none", 1.0), ("linear", 0.5), ("sqrt", 0.5**0.5)]
)
def test_lr_scaling_follows_the_batch_size(scaling, factor):
    parts = build_parts(make_config(*TINY, f"optim.lr_scaling={scaling}"), CPU)  # batch 64
    assert all(g["lr"] == pytest.approx(0.1 * factor) for g in parts.optimizer.param_groups)


def total_grad_norm(model: torch.nn.Module) -> float:
    norms = [p.grad.norm() for p in model.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms)))


@pytest.mark.parametrize("clip", [None, 0.05])
def test_clipping_bounds_the_total_gradient_norm(clip, monkeypatch):
    parts = build_parts(make_config(*TINY, "norm=none"), CPU)
    seen = []
    monkeypatch.setattr(parts.optimizer, "step", lambda: seen.append(total_grad_norm(parts.model)))
    x, y = next(iter(parts.train_loader))
    train_step(parts.model, x, y, parts.optimizer, clip_grad_norm=clip)
    if clip is None:
        assert seen[0] > 0.05  # the unclipped norm is larger than the bound below
    else:
        assert seen[0] == pytest.approx(clip, rel=1e-4)


# Final validation (and test) accuracy per (variant, batch size, lr, seed); nan = diverged.
SEARCH = {
    ("batchnorm", 32): {0.05: [60, 62], 0.1: [70, 72], 0.2: [65, 66]},
    ("batchnorm", 128): {0.05: [50, 52], 0.1: [55, 57], 0.2: [58, 59]},
    ("affine", 32): {0.05: [40, 44], 0.1: [41, 42], 0.2: [float("nan"), 90]},
    ("affine", 128): {0.05: [30, 31], 0.1: [35, 36], 0.2: [35, 36]},
}


@pytest.fixture
def search(tmp_path):
    for (norm, bs), by_lr in SEARCH.items():
        for lr, accs in by_lr.items():
            for seed, acc in enumerate(accs):
                status = "diverged" if math.isnan(acc) else "completed"
                val = [acc - 5, acc - 1, acc] if status == "completed" else [10.0, 10.0, 10.0]
                test = [v + 1 for v in val]  # test accuracy = validation + 1, per epoch
                write_run(
                    tmp_path,
                    norm,
                    bs,
                    seed,
                    test,
                    status=status,
                    val_accs=val,
                    overrides=(f"optim.lr={lr}",),
                )
    return tmp_path


def test_the_lr_is_chosen_on_validation_as_by_hand(search):
    runs, _ = collect(search)
    chosen = {
        (r["norm.name"], r["batch_size"]): r["optim.lr"] for _, r in chosen_lrs(runs).iterrows()
    }
    # By hand from SEARCH: the highest mean validation accuracy; a diverged seed rules an lr
    # out (affine at 32 would otherwise win with 90); a tie goes to the smaller lr.
    assert chosen == {
        ("batchnorm", 32): 0.1,
        ("batchnorm", 128): 0.2,
        ("affine", 32): 0.05,
        ("affine", 128): 0.1,
    }


def test_tuned_accuracy_has_a_t_interval_and_a_paired_difference(search):
    runs, _ = collect(search)
    table = tuned_table(runs).set_index(["norm.name", "batch_size"])
    bn, affine = table.loc[("batchnorm", 32)], table.loc[("affine", 32)]
    assert (bn["test_acc"], bn["n"]) == (72.0, 2)  # 71 and 73: validation + 1
    half = stats.t.ppf(0.975, 1) * stats.sem([71.0, 73.0])
    assert bn["test_ci95"] == pytest.approx(half)
    # affine at its own lr 0.05 (41, 45) minus batchnorm at 0.1 (71, 73), seed by seed.
    diffs = [41.0 - 71.0, 45.0 - 73.0]
    assert affine["diff_vs_batchnorm"] == pytest.approx(sum(diffs) / 2)
    assert affine["diff_ci95"] == pytest.approx(stats.t.ppf(0.975, 1) * stats.sem(diffs))
    assert affine["n_paired"] == 2 and math.isnan(bn["diff_vs_batchnorm"])


def run_results(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, module="bnstudy.results")


@pytest.mark.parametrize("fmt", ["text", "markdown", "csv", "latex"])
def test_tuned_results_in_every_format(search, fmt):
    result = run_results(str(search), "--tuned", "--format", fmt)
    assert result.returncode == 0, result.stderr
    assert "72.00" in result.stdout and "-29.00" in result.stdout
    assert (search / "tuned.csv").is_file()


@pytest.mark.slow
def test_lr_search_then_the_tuned_paper_grid_through_the_cli(tmp_path):
    search = tmp_path / "search"
    grid = ["model=resnet18", "norm=batchnorm,none", "batch_size=64"]
    result = run_cli(
        "-m",
        "experiment=lr_search",
        *TINY,
        *grid,
        "optim.lr=0.05,0.2",
        f"paths.output_root={search}",
    )
    assert result.returncode == 0, result.stderr
    shown = run_results(str(search), "--tuned", "--plot")
    assert shown.returncode == 0, shown.stderr
    assert (search / "lr_sensitivity-resnet18-bs64.png").is_file()
    runs, _ = collect(search)
    expected = {r["norm.name"]: r["optim.lr"] for _, r in chosen_lrs(runs).iterrows()}

    tuned = tmp_path / "tuned"
    result = run_cli(
        "-m",
        "experiment=paper_tuned",
        *TINY,
        *grid,
        "seed=0",
        f"tuning.from={search}",
        f"paths.output_root={tuned}",
    )
    assert result.returncode == 0, result.stderr
    final, _ = collect(tuned)
    assert {r["norm.name"]: r["optim.lr"] for _, r in final.iterrows()} == expected

    refused = run_cli(
        "-m",
        "experiment=paper_tuned",
        *TINY,
        "norm=affine",
        f"tuning.from={search}",
        f"paths.output_root={tmp_path / 'none'}",
    )
    assert refused.returncode == 2
    assert "no lr search for" in refused.stderr and "variant=affine" in refused.stderr
    assert not (tmp_path / "none").exists()


# ------------------------------------------------------- divergence and unfinished seeds

D = float("nan")  # a diverged seed
# Final validation accuracy per (variant, lr) and seed 0, 1, 2, at batch size 32; None: a
# seed the search asked for (its grid) that has no run folder yet.
HARD = {
    ("batchnorm", ()): {0.05: [60, 61, 62], 0.1: [70, 71, 72], 0.2: [65, 66, 67]},
    # 0.1 would win on its survivors (80.5); a diverged seed rules it out.
    ("affine", ()): {0.05: [40, 41, 42], 0.1: [80, 81, D], 0.2: [D, D, D]},
    ("none", ()): {0.05: [30, D, 31], 0.1: [D, D, D], 0.2: [D, D, D]},
    # 0.1 could still win: its third seed has not run.
    ("bnminus", ()): {0.05: [50, 51, 52], 0.1: [55, 56, None]},
    ("none", ("model.init=lsuv",)): {0.05: [20, 21, 22], 0.1: [24, 25, 26]},
}


# On Fashion-MNIST, whose files are here: the tuned grid's cells are checked against them.
DATA = "dataset=fashion_mnist"


@pytest.fixture
def hard_search(tmp_path):
    asked = []
    for (norm, overrides), by_lr in HARD.items():
        for lr, accs in by_lr.items():
            for seed, acc in enumerate(accs):
                more = (DATA, *overrides, f"optim.lr={lr}")
                asked.append((norm, 32, seed, "resnet18", more))
                if acc is None:
                    continue
                status = "diverged" if math.isnan(acc) else "completed"
                val = [acc - 5, acc] if status == "completed" else [10.0]
                test = [v + 1 for v in val]  # test accuracy = validation + 1
                write_run(tmp_path, norm, 32, seed, test, status, val_accs=val, overrides=more)
    write_grid(tmp_path, asked)
    return tmp_path


def test_a_cell_chooses_only_among_lrs_whose_every_seed_completed(hard_search):
    runs, _ = collect(hard_search)
    choices = cell_choices(with_asked(hard_search, runs)).set_index(VARIANT)
    got = {
        v: (r["state"], r["optim.lr"] if r["state"] == CHOSEN else None, r["note"], r["lrs"])
        for v, r in choices.iterrows()
    }
    assert got == {
        "batchnorm": (CHOSEN, 0.1, "", "0.05–0.2"),
        "affine": (CHOSEN, 0.05, "0.1 (1/3), 0.2 (3/3)", "0.05–0.2"),
        "none": (ALL_DIVERGED, None, "0.05 (1/3), 0.1 (3/3), 0.2 (3/3)", "0.05–0.2"),
        "bnminus": (UNFINISHED, None, "lr 0.1: 1 missing", "0.05–0.1"),
        "none + model.init=lsuv": (CHOSEN, 0.1, "", "0.05–0.1"),
    }
    assert choices.loc["affine", "score"] == 41.0 and choices.loc["affine", "seeds"] == 3
    # Without the sweep's grid the missing seed is not known to be asked for.
    assert cell_choices(runs).set_index(VARIANT).loc["bnminus", "state"] == CHOSEN


def t_text(values: list[float]) -> str:
    half = stats.t.ppf(0.975, len(values) - 1) * stats.sem(values)
    return f"{sum(values) / len(values):.2f} ± {half:.2f} (n={len(values)})"


# By hand, each row: lr, val acc (seeds), test acc (= val + 1), paired Δ to batchnorm's
# (71, 72, 73) at its lr 0.1, and the lrs a diverged seed ruled out.
HARD_ROWS = {
    "batchnorm": ["0.1", "71.00 (n=3)", t_text([71, 72, 73]), "", ""],
    "affine": ["0.05", "41.00 (n=3)", t_text([41, 42, 43]), "-30.00 ± 0.00 (n=3)",
               "0.1 (1/3), 0.2 (3/3)"],
    "bnminus": ["unfinished: lr 0.1: 1 missing", "", "", "", ""],
    "none": ["diverged at every lr: 0.05–0.2", "", "", "", "0.05 (1/3), 0.1 (3/3), 0.2 (3/3)"],
    "none + model.init=lsuv": ["0.1", "25.00 (n=3)", t_text([25, 26, 27]),
                               "-46.00 ± 0.00 (n=3)", ""],
}  # fmt: skip


@pytest.mark.parametrize("fmt", ["text", "markdown", "csv", "latex"])
def test_the_tuned_table_keeps_every_variant_and_says_why_in_every_format(hard_search, fmt):
    result = run_results(str(hard_search), "--tuned", "--format", fmt)
    assert result.returncode == 0, result.stderr
    title, rows = read_table(result.stdout, fmt)
    expected = HARD_ROWS
    if fmt == "text":  # empty cells leave no trace in plain text
        expected = {v: [c for c in cells if c] for v, cells in HARD_ROWS.items()}
    assert rows == expected
    assert title.startswith("tuned — dataset.name=fashion_mnist, model.name=resnet18")
    assert "every seed asked for completed; an lr with a diverged seed is ruled out" in title


def tuned_lr(search, *overrides: str) -> float:
    """The lr `experiment=paper_tuned tuning.from=search` resolves for a cell (bs 32)."""
    cfg = make_config(
        "experiment=paper_tuned", DATA, "batch_size=32", "trainer.epochs=3", "device=cpu",
        f"tuning.from={search}", *overrides,
    )  # fmt: skip
    return cfg.optim.lr


def test_the_tuned_grid_reads_each_variants_lr_and_refuses_what_has_none(hard_search):
    assert tuned_lr(hard_search, "norm=affine") == 0.05
    # The ablations' controls are variants of their own, tuned like the paper's four.
    ablation = ("experiment=ablations", "tuning=tuned", "ablation=none_lsuv")
    assert tuned_lr(hard_search, *ablation) == 0.1
    for norm, message in (
        ("none", "diverged at every lr (0.05–0.2): no lr to train it at"),
        ("bnminus", "is unfinished (lr 0.1: 1 missing); rerun its command to finish it"),
        ("groupnorm", "no lr search for dataset.name=fashion_mnist"),
    ):
        with pytest.raises(Exception) as refused:
            tuned_lr(hard_search, f"norm={norm}")
        assert message in one_line(refused.value), norm


def test_paper_tuned_refuses_a_variant_that_diverged_at_every_lr_in_one_line(hard_search, tmp_path):
    out = tmp_path / "tuned"
    result = run_cli(
        "-m", "experiment=paper_tuned", DATA, "model=resnet18", "norm=batchnorm,none",
        "batch_size=32",
        "trainer.epochs=3", "device=cpu", f"tuning.from={hard_search}", f"paths.output_root={out}",
    )  # fmt: skip
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "e.g. norm=none" in line and "diverged at every lr (0.05–0.2)" in line
    assert "no lr search" not in line
    assert not out.exists()


# --------------------------------------------------------------- the tuning config group


def sweep_of(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


LRS = "0.0125,0.025,0.05,0.1,0.2,0.4,0.8"


def test_any_grid_is_searched_and_tuned_through_the_tuning_group():
    paper = dict(sweep_of("experiment=paper").hydra.sweeper.params)
    # experiment=lr_search is the paper's grid × the lr grid × 3 seeds, on a validation split.
    search = sweep_of("experiment=lr_search")
    assert dict(search.hydra.sweeper.params) == {**paper, "seed": "0,1,2", "optim.lr": LRS}
    assert (search.data.val_size, search.paths.output_root) == (5000, "outputs/lr_search")
    ablations = sweep_of("experiment=ablations", "tuning=search")
    params = dict(ablations.hydra.sweeper.params)
    assert params["optim.lr"] == LRS and params["seed"] == "0,1,2"
    assert "none_skipinit" in params["ablation"] and ablations.data.val_size == 5000
    # The tuned grid: each cell's lr read back, seeds 0-2, on every training image.
    tuned = sweep_of("experiment=ablations", "tuning=tuned", "tuning.from=outputs/lr_search")
    assert OmegaConf.to_container(tuned.optim)["lr"] == "${bnstudy_tuned_lr:}"
    assert tuned.hydra.sweeper.params["seed"] == "0,1,2" and tuned.data.val_size == 0
    paper_tuned = sweep_of("experiment=paper_tuned")
    assert dict(paper_tuned.hydra.sweeper.params) == {**paper, "seed": "0,1,2"}
    assert paper_tuned.paths.output_root == "outputs/paper_tuned"


def test_a_search_without_a_validation_split_is_refused_with_the_fix():
    with pytest.raises(ConfigError) as refused:
        validate(make_config("experiment=paper", "tuning=search", "device=cpu"))
    assert str(refused.value) == (
        "tuning=search chooses each lr on the validation split, and data.val_size=0 holds none "
        "out (experiment=paper trains on every image); add data.val_size=5000, or run "
        "experiment=lr_search"
    )


@pytest.mark.slow
def test_the_ablations_controls_are_searched_and_tuned_at_their_own_lr(tmp_path):
    grid = ["ablation=batchnorm,none_lsuv,none_skipinit", "batch_size=64", "seed=0"]
    search = tmp_path / "search"
    result = run_cli(
        "-m", "tuning=search", *TINY, *grid, "optim.lr=0.02,0.2", f"paths.output_root={search}"
    )
    assert result.returncode == 0, result.stderr
    runs, _ = collect(search)
    expected = {r[VARIANT]: r["optim.lr"] for _, r in chosen_lrs(runs).iterrows()}
    assert set(expected) == {
        "batchnorm",
        "none + model.init=lsuv",
        "none + model.zero_init_residual=true",
    }

    tuned = tmp_path / "tuned"
    result = run_cli(
        "-m", "tuning=tuned", *TINY, *grid, f"tuning.from={search}", f"paths.output_root={tuned}"
    )
    assert result.returncode == 0, result.stderr
    final, _ = collect(tuned)
    assert {r[VARIANT]: r["optim.lr"] for _, r in final.iterrows()} == expected
