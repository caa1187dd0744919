"""Figures say what they show: seeds in the titles, spread only with several seeds, a look of
its own per variant (baseline first), the tables' rounding and the chance level."""

from __future__ import annotations

import pytest
from matplotlib.collections import PathCollection, PolyCollection

from bnstudy.analysis import figures, look, lr_figures
from bnstudy.analysis.collect import collect, collect_layers
from bnstudy.analysis.tables import _settings, accuracy_table
from bnstudy.records import SUMMARY_COLUMNS, LayerStats, RunFolder
from tests.helpers import write_run


@pytest.fixture
def drawn(monkeypatch):
    """The figures `figures.plot` makes, by file name prefix, kept open for inspection."""
    made = {}

    def keep(plt, fig, path):
        made[path.name.split("-")[0]] = fig
        return path

    for module in (figures, lr_figures):  # each looks `save` up in its own namespace
        monkeypatch.setattr(module, "save", keep)
    return made


def _one_seed_grid(root):
    for bs in (32, 128):
        write_run(root, "batchnorm", bs, 0, [70.0, 79.55])
        # Two variants with identical curves: both must stay visible.
        write_run(root, "affine", bs, 0, [50.0, 60.0])
        write_run(root, "none", bs, 0, [50.0, 60.0])


def test_one_seed_figures_claim_no_spread_and_keep_every_variant_visible(tmp_path, drawn):
    _one_seed_grid(tmp_path)
    runs, epochs = collect(tmp_path)
    figures.plot(runs, epochs, tmp_path)
    assert set(drawn) == {"curves", "final_vs_batch_size", "heatmap"}

    curves = drawn["curves"]
    title = curves._suptitle.get_text()
    assert "mean of 1 seed)" in title and "band" not in title and "std" not in title
    ax = curves.axes[0]
    assert not [c for c in ax.collections if isinstance(c, PolyCollection)]  # no band
    lines = {line.get_label(): line for line in ax.get_lines() if line.get_label()[0] != "_"}
    looks = {(ln.get_marker(), ln.get_linestyle(), ln.get_color()) for ln in lines.values()}
    assert len(looks) == len(lines) == 3
    chance = [ln for ln in ax.get_lines() if list(ln.get_ydata()) == [10.0, 10.0]]
    assert chance, "a chance line at 100/10 classes"
    legend = [t.get_text() for t in curves.legends[0].get_texts()]
    assert legend == ["batchnorm", "affine", "none", "chance level"]  # baseline first

    final = drawn["final_vs_batch_size"]
    assert "±" not in final._suptitle.get_text() and "1 seed" in final._suptitle.get_text()
    assert not final.axes[0].containers  # no error bars
    assert sorted(final.axes[0].get_xticks()) == [32, 128]  # the batch axis has two points

    heatmap = drawn["heatmap"]
    texts = [t.get_text() for t in heatmap.axes[0].texts]
    assert "79.55\n(n=1)" in texts  # as the table rounds it, not 79.5
    [(_, group)] = list(_settings(runs))
    table = accuracy_table(group, "final_test_acc")
    assert table.loc["batchnorm", "bs 32"] == "79.55 (1 seed)"
    assert list(table.index) == ["batchnorm", "affine", "none"]
    assert [t.get_text() for t in heatmap.axes[0].get_yticklabels()] == list(table.index)


def test_several_seeds_show_their_count_and_spread(tmp_path, drawn):
    for seed, acc in enumerate([70.0, 72.0, 74.0]):
        for bs in (32, 128):
            write_run(tmp_path, "batchnorm", bs, seed, [acc - 5, acc])
            write_run(tmp_path, "none", bs, seed, [acc - 20, acc - 10])
    runs, epochs = collect(tmp_path)
    figures.plot(runs, epochs, tmp_path)
    curves = drawn["curves"]._suptitle.get_text()
    assert "mean of 3 seeds, band: min..max over seeds" in curves
    assert [c for c in drawn["curves"].axes[0].collections if isinstance(c, PolyCollection)]
    final = drawn["final_vs_batch_size"]
    assert "mean ± 95% t-CI of the completed seeds, 3 seeds" in final._suptitle.get_text()
    assert final.axes[0].containers  # error bars


def test_seed_counts_that_differ_are_said_as_a_range():
    assert look.seeds_text([1, 3, 3]) == "1-3 seeds per point"
    assert look.seeds_text([2, 2]) == "2 seeds"
    assert look.seeds_text([1]) == "1 seed"


def _write_layers(folder, stds_at_end: list[float]) -> None:
    """A layers.csv for the run in `folder`: at init every site has std 1; after epoch 1 the
    given stds; one norm layer per stage."""
    run = RunFolder(folder)
    ident = {k: v for k, v in run.read_summary().items() if k not in SUMMARY_COLUMNS}
    rows = []
    for epoch, stds in ((0, [1.0] * len(stds_at_end)), (1, stds_at_end)):
        for depth, std in enumerate(stds):
            rows.append(LayerStats(epoch, f"site{depth}", "block", depth, depth, 8, act_std=std))
            rows.append(
                LayerStats(epoch, f"site{depth}.norm", "norm", depth, depth, 8, 1 - epoch / 10,
                           0.1, 0.8, 1.2, 0.0, 0.0, 0.1)
            )  # fmt: skip
    run.write_layers(ident, rows)


def test_layer_figures_keep_zeros_on_the_log_axis_and_shares_non_negative(tmp_path, drawn):
    _write_layers(write_run(tmp_path, "batchnorm", 32, 0, [50.0]), [1.0, 1.2, 1.1])
    _write_layers(write_run(tmp_path, "affine", 32, 0, [40.0]), [0.5, 0.0, 0.3])  # a dead block
    runs, epochs = collect(tmp_path)
    figures.plot(runs, epochs, tmp_path, collect_layers(tmp_path, runs))

    signal = drawn["signal"]
    assert "✕ at 0.03: std 0, a dead output" in signal._suptitle.get_text()
    at_end = signal.axes[1]
    [crosses] = [c for c in at_end.collections if len(c.get_offsets())]
    assert crosses.get_offsets().tolist() == [[1.0, 0.03]]  # the zero, drawn at the floor

    gamma = drawn["gamma"]
    assert "γ per stage over training (resnet18, batch 32, 1 seed)" in gamma._suptitle.get_text()
    share_axes = gamma.axes[2:4]  # the lower row: share of channels with |γ| < 0.01
    assert all(ax.get_ylim()[0] == 0 for ax in share_axes)
    assert [ax.get_title() for ax in gamma.axes[:2]] == ["batchnorm", "affine"]


def test_earlier_variants_are_drawn_wider_so_coinciding_lines_stay_visible():
    looks = look.styles(["batchnorm", "affine", "bnminus", "none"])
    sizes = [look["markersize"] for look in looks.values()]
    widths = [look["linewidth"] for look in looks.values()]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 4
    assert widths == sorted(widths, reverse=True) and len(set(widths)) == 4


@pytest.fixture
def diverging(tmp_path):
    """Three seeds at batch sizes 32 and 128: affine lost one seed at 32 (in epoch 2), none
    every seed at 32 (in epoch 3)."""
    for bs in (32, 128):
        for seed, acc in enumerate([70.0, 72.0, 74.0]):
            write_run(tmp_path, "batchnorm", bs, seed, [acc - 20, acc - 5, acc])
            if bs == 32 and seed == 2:
                write_run(tmp_path, "affine", bs, seed, [acc - 40], status="diverged")
            else:
                write_run(tmp_path, "affine", bs, seed, [acc - 40, acc - 30, acc - 20])
            if bs == 32:
                write_run(tmp_path, "none", bs, seed, [15.0, 20.0], status="diverged")
            else:
                write_run(tmp_path, "none", bs, seed, [acc - 50, acc - 45, acc - 40])
    return tmp_path


def crosses(ax) -> list[tuple[list[float], str]]:
    """The ✕ marks of an axes (x, y in axes units) and the counts written beside them."""
    marks = [c for c in ax.collections if isinstance(c, PathCollection)]
    texts = sorted(t.get_text() for t in ax.texts)
    return sorted(map(tuple, (p for m in marks for p in m.get_offsets().tolist()))), texts


def test_every_figure_marks_diverged_runs_at_the_axis_and_counts_them(diverging, drawn):
    runs, epochs = collect(diverging)
    figures.plot(runs, epochs, diverging)
    rows = look.CROSS_ROW
    legend = ["batchnorm", "affine (✕ diverged 1/6)", "none (✕ diverged 3/6)", "chance level"]

    curves = drawn["curves"]
    assert "✕ at the axis: a run diverged in that epoch" in curves._suptitle.get_text()
    assert [t.get_text() for t in curves.legends[0].get_texts()] == legend
    # Batch 32: affine's seed in epoch 2 on the axis, none's three in epoch 3 a row above.
    assert crosses(curves.axes[0]) == ([(2.0, 0.0), (3.0, rows)], ["1/3", "3/3"])
    assert crosses(curves.axes[1]) == ([], [])
    # The mean leaves the diverged run out: affine at 32 is the mean of its two survivors.
    affine = [ln for ln in curves.axes[0].get_lines() if ln.get_label() == "affine"][0]
    assert list(affine.get_ydata()) == [31.0, 41.0, 51.0]

    final = drawn["final_vs_batch_size"]
    assert "✕ k/N at the axis: k of N seeds diverged" in final._suptitle.get_text()
    assert [t.get_text() for t in final.legends[0].get_texts()] == legend
    assert crosses(final.axes[0]) == ([(32.0, 0.0), (32.0, rows)], ["1/3", "3/3"])

    heatmap = drawn["heatmap"]
    texts = [t.get_text() for t in heatmap.axes[0].texts]
    assert "diverged\n3/3" in texts and "51.00\n(n=2)\n✕ 1/3" in texts and "72.00\n(n=3)" in texts
    assert "✕ k/N: k of the cell's N seeds diverged" in heatmap._suptitle.get_text()


def test_a_grid_that_diverged_everywhere_still_has_its_figures(tmp_path, drawn):
    for seed in range(2):
        write_run(tmp_path, "none", 32, seed, [12.0], status="diverged")
    runs, epochs = collect(tmp_path)
    figures.plot(runs, epochs, tmp_path)
    assert set(drawn) == {"curves", "final_vs_batch_size", "heatmap"}
    assert crosses(drawn["final_vs_batch_size"].axes[0]) == ([(32.0, 0.0)], ["2/2"])
    assert [t.get_text() for t in drawn["heatmap"].axes[0].texts] == ["diverged\n2/2"]


def test_lr_sensitivity_ticks_at_every_lr_searched_and_marks_diverged_seeds(tmp_path, drawn):
    d = float("nan")
    search = {
        "batchnorm": {0.0125: [50, 51], 0.05: [60, 61], 0.2: [70, 71], 0.8: [d, d]},
        "none": {0.0125: [30, 31], 0.05: [40, d], 0.2: [d, d], 0.8: [d, d]},
    }
    for norm, by_lr in search.items():
        for lr, accs in by_lr.items():
            for seed, acc in enumerate(accs):
                status = "completed" if acc == acc else "diverged"
                val = [acc] if status == "completed" else [10.0]
                write_run(tmp_path, norm, 32, seed, val, status, val_accs=val,
                          overrides=(f"optim.lr={lr}",))  # fmt: skip
    runs, _ = collect(tmp_path)
    [path] = lr_figures.plot_lr_sensitivity(runs, tmp_path)
    assert path.name == "lr_sensitivity-resnet18-bs32.png"
    fig = drawn["lr_sensitivity"]
    ax = fig.axes[0]
    assert list(ax.get_xticks()) == [0.0125, 0.05, 0.2, 0.8]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.0125", "0.05", "0.2", "0.8"]
    rows = look.CROSS_ROW
    assert crosses(ax) == (
        [(0.05, rows), (0.2, rows), (0.8, 0.0), (0.8, rows)],
        ["1/2", "2/2", "2/2", "2/2"],
    )
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["batchnorm (✕ diverged 2/8 seeds)", "none (✕ diverged 5/8 seeds)"]
    # The chosen lr is filled: batchnorm's 0.2 (70.5), none's 0.0125 (30.5).
    filled = [ln for ln in ax.get_lines() if ln.get_markerfacecolor() != "none"]
    assert sorted((ln.get_xdata()[0], ln.get_ydata()[0]) for ln in filled) == [
        (0.0125, 30.5), (0.2, 70.5)
    ]  # fmt: skip
