"""The paper's tables from collected runs: one table per setting, variants × batch sizes, in
text, markdown, csv or latex (pandas' own writers)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import pandas as pd

from bnstudy.collect import MISSING, VARIANT, identity_columns
from bnstudy.controls import DEFAULTS, variant_order
from bnstudy.records import BATCH_SIZE, DATASET, MODEL, NORM, SEED, WIDTH
from bnstudy.stats import mean_ci_text

FORMATS = ("text", "markdown", "csv", "latex")
# A table's axes and what is averaged over; every other identity column makes its own table.
# The variant (norm and controls) makes the rows, batch sizes the columns; seeds are averaged.
AXES = (VARIANT, NORM, *DEFAULTS, BATCH_SIZE, SEED)
# Shown in every table's title even when all runs share them.
HEADLINE_KEYS = (WIDTH, "optim.name", "optim.lr", "trainer.epochs", "data.val_size")
# The summary's headline numbers: never an epoch chosen on the test set.
ACCURACIES = (
    ("final_test_acc", "final test acc %"),
    ("test_acc_at_best_val", "test acc % at the best validation epoch"),
)


def _settings(runs: pd.DataFrame) -> Iterable[tuple[str, pd.DataFrame]]:
    """One table per setting: runs equal in every identity column but the axes, so a cell
    only ever averages over seeds. The title names the headline keys and every key that
    varies between the tables."""
    setting = [c for c in identity_columns(runs) if c not in ("run_id", *AXES)]
    varying = [c for c in setting if runs[c].nunique(dropna=False) > 1]
    groups = runs.groupby(setting, sort=False, dropna=False)
    keyed = [(dict(zip(setting, key, strict=True)), group) for key, group in groups]
    for values, group in sorted(keyed, key=lambda vg: _setting_order(vg[0])):
        yield f"{values[DATASET]} · {values[MODEL]} ({_details(values, varying)})", group


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


def accuracy_table(group: pd.DataFrame, column: str) -> pd.DataFrame:
    """Rows: variants; columns: batch sizes; cells: mean ± 95% CI (n) over completed seeds."""
    norms, sizes = variant_order(group[VARIANT]), sorted(group[BATCH_SIZE].unique())
    table = pd.DataFrame(index=pd.Index(norms, name="variant"), columns=sizes, dtype=object)
    for norm in norms:
        for size in sizes:
            cell = group[(group[VARIANT] == norm) & (group[BATCH_SIZE] == size)]
            table.loc[norm, size] = _accuracy_cell(cell, column)
    table.columns = pd.Index([f"bs {s}" for s in sizes])
    return table


def _accuracy_cell(cell: pd.DataFrame, column: str) -> str:
    done = cell[cell["status"] == "completed"][column].dropna()
    if done.empty:
        statuses = sorted(cell["status"].unique())
        return "/".join(statuses) if statuses else MISSING
    text = mean_ci_text(done)
    others = len(cell) - len(done)
    if others:
        text += f" +{others} " + "/".join(sorted(cell[cell["status"] != "completed"]["status"]))
    return text


def status_table(group: pd.DataFrame) -> pd.DataFrame:
    """Rows: variants; columns: batch sizes; cells: how many runs are in which state."""
    norms, sizes = variant_order(group[VARIANT]), sorted(group[BATCH_SIZE].unique())
    seeds = _seeds(group)
    table = pd.DataFrame(index=pd.Index(norms, name="variant"), columns=sizes, dtype=object)
    for norm in norms:
        for size in sizes:
            cell = group[(group[VARIANT] == norm) & (group[BATCH_SIZE] == size)]
            counts = cell["status"].value_counts().to_dict()
            missing = len(set(seeds) - set(cell[SEED]))
            if missing:
                counts[MISSING] = missing
            table.loc[norm, size] = ", ".join(
                f"{n} {s}" if len(seeds) > 1 else s for s, n in sorted(counts.items())
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
    return str(text).replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$")


def report(runs: pd.DataFrame, fmt: str = "text") -> str:
    """All tables for `runs`: final test accuracy, the test accuracy at the best validation
    epoch (when runs hold out a validation split), then status, per setting."""
    parts = []
    for title, group in _settings(runs):
        for column, what in ACCURACIES:
            if column in group and group[column].notna().any():
                parts.append(render(accuracy_table(group, column), fmt, f"{what} — {title}"))
        parts.append(render(status_table(group), fmt, f"status — {title}"))
    counts = runs["status"].value_counts().to_dict()
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    lines = [f"{len(runs)} runs: {summary}"]
    for _, run in runs[runs["status"] == "failed"].iterrows():
        lines.append(f"  failed: {run['run_dir']}: {run.get('error', '')}")
    if fmt in ("text", "markdown"):
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def _natural(name: str) -> tuple[str, int]:
    """Sort key that puts resnet18 before resnet101."""
    digits = "".join(ch for ch in name if ch.isdigit())
    return name.rstrip("0123456789"), int(digits or 0)
