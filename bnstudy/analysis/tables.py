"""The paper's tables from collected runs: one table per setting, variants × batch sizes, in
text, markdown, csv or latex (pandas' own writers).

Every accuracy cell is the mean ± 95% t-CI over its completed seeds with their count, and
says what became of its other seeds: `77.40 ± 1.20 (n=3)`, `75.10 ± 2.00 (n=2; diverged
1/3)`, `diverged 3/3`. No mean of survivors goes without the count of those that did not
survive.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import pandas as pd

from bnstudy.analysis.collect import (
    COMPLETED,
    FORMAT_DIVERGED,
    MISSING,
    OUTCOMES,
    VARIANT,
    identity_columns,
    outcome,
    varies,
)
from bnstudy.analysis.stats import STATISTIC, mean_ci_text
from bnstudy.records import BATCH_SIZE, DATASET, MODEL, NORM, SEED, WIDTH
from bnstudy.study.controls import DEFAULTS, variant_order
from bnstudy.sweeps.report import runs_text

FORMATS = ("text", "markdown", "csv", "latex")


LR = "optim.lr"


# A table's axes and what is averaged over; every other identity column makes its own table.
# The variant (norm and controls) makes the rows, batch sizes the columns; seeds are averaged.
AXES = (VARIANT, NORM, *DEFAULTS, BATCH_SIZE, SEED)


# Keys a tuned grid sets cell by cell (tuning=tuned: each cell's own lr): where every cell
# has one value of its own, each cell names it, and they make no table of their own.
PER_CELL_KEYS = (LR,)


# Shown in every table's title even when all runs share them.
HEADLINE_KEYS = (WIDTH, "optim.name", LR, "trainer.epochs", "data.val_size")


# The summary's headline numbers: never an epoch chosen on the test set.
ACCURACIES = (
    ("final_test_acc", "final test acc %"),
    ("test_acc_at_best_val", "test acc % at the best validation epoch"),
)


# What the other seeds of a cell are: `diverged 1/3` is one of the cell's three seeds.
OTHERS = "diverged k/N: k of the cell's N seeds diverged (so for missing, failed, …)"


def setting_keys(runs: pd.DataFrame, axes: Iterable[str] = AXES) -> list[str]:
    """The identity columns that make a table (or figure) of their own: all but the axes,
    and but a PER_CELL_KEY that has one value in every cell (variant, batch size, model) of
    an otherwise equal setting, such as the lr of a tuned grid."""
    setting = [c for c in identity_columns(runs) if c not in ("run_id", *axes)]
    for key in PER_CELL_KEYS:
        if key not in setting or not varies(runs, key):
            continue
        rest = [c for c in setting if c != key]
        cells = [*rest, *(c for c in (MODEL, VARIANT, BATCH_SIZE) if c not in rest)]
        if all(not varies(cell, key) for _, cell in runs.groupby(cells, dropna=False)):
            setting = rest
    return setting


def per_cell_keys(group: pd.DataFrame) -> list[str]:
    """The PER_CELL_KEYS that differ between the cells of one table (see setting_keys)."""
    return [k for k in PER_CELL_KEYS if k in group and varies(group, k)]


def _settings(runs: pd.DataFrame) -> Iterable[tuple[str, pd.DataFrame]]:
    """One table per setting: runs equal in every identity column but the axes, so a cell
    only ever averages over seeds. The title names the headline keys and every key that
    varies between the tables."""
    setting = setting_keys(runs)
    changing = [c for c in setting if varies(runs, c)]
    groups = runs.groupby(setting, sort=False, dropna=False)
    keyed = [(dict(zip(setting, key, strict=True)), group) for key, group in groups]
    for values, group in sorted(keyed, key=lambda vg: _setting_order(vg[0])):
        for key in (k for k in PER_CELL_KEYS if k in group and k not in setting):
            values[key] = PER_CELL if varies(group, key) else group[key].iloc[0]
        yield f"{values[DATASET]} · {values[MODEL]} ({_details(values, changing)})", group


PER_CELL = "per cell"  # a title's value of a PER_CELL_KEY that each cell names


def _details(values: dict, varying: list[str]) -> str:
    """`key=value, …` for the headline keys and the varying ones (dataset and model aside)."""
    shown = [k for k in (*HEADLINE_KEYS, *varying) if k in values and k not in (DATASET, MODEL)]
    return ", ".join(f"{k}={_text(values[k])}" for k in dict.fromkeys(shown))


def _setting_order(values: dict) -> tuple:
    """Dataset, then models by depth (resnet18 before resnet101), then the rest as text."""
    return (str(values[DATASET]), _natural(str(values[MODEL])), str(values))


def _text(value: object) -> str:
    if isinstance(value, float):
        return "unset" if math.isnan(value) else f"{value:g}"
    return str(value)


def _seeds(group: pd.DataFrame) -> list[int]:
    return sorted(group[SEED].unique())


def outcome_counts(cell: pd.DataFrame, seeds: Iterable[int]) -> dict[str, int]:
    """How many of the cell's seeds ended how, in OUTCOMES order; a seed of `seeds` (those
    the cell's table has) that the cell lacks counts as missing."""
    counts = outcome(cell).value_counts().to_dict() if len(cell) else {}
    absent = len(set(seeds) - set(cell[SEED]))
    if absent:
        counts[MISSING] = counts.get(MISSING, 0) + absent
    return {o: counts[o] for o in (*OUTCOMES, *sorted(counts)) if counts.get(o)}


def accuracy_table(group: pd.DataFrame, column: str) -> pd.DataFrame:
    """Rows: variants; columns: batch sizes; cells: mean ± 95% CI over the completed seeds
    with their count, and the count of every other outcome (`diverged 1/3`)."""
    norms, sizes = variant_order(group[VARIANT]), sorted(group[BATCH_SIZE].unique())
    seeds, per_cell = _seeds(group), per_cell_keys(group)
    table = pd.DataFrame(index=pd.Index(norms, name="variant"), columns=sizes, dtype=object)
    for norm in norms:
        for size in sizes:
            cell = group[(group[VARIANT] == norm) & (group[BATCH_SIZE] == size)]
            table.loc[norm, size] = accuracy_cell(cell, column, seeds, per_cell)
    table.columns = pd.Index([f"bs {s}" for s in sizes])
    return table


def accuracy_cell(
    cell: pd.DataFrame, column: str, seeds: Iterable[int], per_cell: Iterable[str] = ()
) -> str:
    """`77.40 ± 1.20 (n=3)`, `75.10 ± 2.00 (n=2; diverged 1/3)`, `70.00 (1 seed; diverged
    2/3)`, `diverged 3/3`; the cell's own value of each `per_cell` key after (`lr 0.05`)."""
    counts = outcome_counts(cell, seeds)
    total = sum(counts.values())
    notes = [f"{o} {k}/{total}" for o, k in counts.items() if o != COMPLETED]
    notes += [_per_cell_text(cell, key) for key in per_cell if cell[key].notna().any()]
    done = cell[cell["status"] == COMPLETED][column].dropna()
    if done.empty:
        return "; ".join(notes) if notes else MISSING
    return mean_ci_text(done, notes)


def _per_cell_text(cell: pd.DataFrame, key: str) -> str:
    name = key.rsplit(".", 1)[-1]
    return f"{name} " + ", ".join(_text(v) for v in sorted(cell[key].dropna().unique()))


def status_table(group: pd.DataFrame) -> pd.DataFrame:
    """Rows: variants; columns: batch sizes; cells: how many runs are in which state."""
    norms, sizes = variant_order(group[VARIANT]), sorted(group[BATCH_SIZE].unique())
    seeds = _seeds(group)
    table = pd.DataFrame(index=pd.Index(norms, name="variant"), columns=sizes, dtype=object)
    for norm in norms:
        for size in sizes:
            cell = group[(group[VARIANT] == norm) & (group[BATCH_SIZE] == size)]
            counts = outcome_counts(cell, seeds)
            table.loc[norm, size] = ", ".join(
                f"{n} {s}" if len(seeds) > 1 else s for s, n in counts.items()
            )
    table.columns = pd.Index([f"bs {s}" for s in sizes])
    return table


def render(table: pd.DataFrame, fmt: str, title: str) -> str:
    """One table as text, markdown, csv or latex, through pandas' own writers."""
    if fmt == "csv":
        return f"# {title}\n{table.to_csv()}"
    if fmt == "markdown":
        return f"**{title}**\n\n{table.to_markdown()}\n"
    if fmt == "latex":
        cells = table.map(_latex).rename(columns=_latex, index=_latex)
        columns = "l" + "r" * len(table.columns)
        latex = cells.to_latex(column_format=columns, caption=_latex(title), position="h")
        return latex + "\n"
    # tabulate's plain format: the variants' names left-aligned, one header line.
    text = table.reset_index().to_markdown(index=False, tablefmt="plain")
    return f"{title}\n{text}\n"


def _latex(text: object) -> str:
    return (
        str(text)
        .replace("_", r"\_")
        .replace("%", r"\%")
        .replace("±", r"$\pm$")
        .replace("`", "")
        .replace("–", "--")
    )


def report(runs: pd.DataFrame, fmt: str = "text") -> str:
    """All tables for `runs`: final test accuracy, the test accuracy at the best validation
    epoch (when runs hold out a validation split), then status, per setting."""
    parts = []
    for title, group in _settings(runs):
        for column, what in ACCURACIES:
            if column in group and group[column].notna().any():
                heading = f"{what}, {STATISTIC}; {OTHERS} — {title}"
                parts.append(render(accuracy_table(group, column), fmt, heading))
        parts.append(render(status_table(group), fmt, f"status — {title}"))
    counts = outcome_counts(runs, seeds=())
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    lines = [f"{runs_text(len(runs))}: {summary}"]
    # The runs whose error a reader needs: a crash, and a divergence of the number format.
    for what, rows in (
        ("failed", runs[runs["status"] == "failed"]),
        (FORMAT_DIVERGED, runs[outcome(runs) == FORMAT_DIVERGED]),
    ):
        for run in rows.to_dict("records"):
            error = run.get("error")
            lines.append(f"  {what}: {run['run_dir']}: {'' if pd.isna(error) else error}")
    if fmt in ("text", "markdown"):
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def _natural(name: str) -> tuple[str, int]:
    """Sort key that puts resnet18 before resnet101."""
    digits = "".join(ch for ch in name if ch.isdigit())
    return name.rstrip("0123456789"), int(digits or 0)
