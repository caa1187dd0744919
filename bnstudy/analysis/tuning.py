"""A fair comparison: each variant at its own learning rate, chosen on validation.

From the runs of an lr search (tuning=search: any grid × optim.lr, on the training images
minus the validation split) together with the runs the search asked for that have no folder
yet, per cell (a setting, a variant, a batch size) and lr: the seeds the search asked for
and how each ended. The rule:

- An lr is *eligible* when every seed the search asked for at it completed; its score is
  the mean final validation accuracy over them. The chosen lr is the eligible lr with the
  highest score (the smaller lr on a tie).
- An lr with a diverged seed is not eligible, whatever its other seeds reached: the mean of
  the survivors is the survivor bias the tables refuse, and an lr at which one seed in three
  diverges will diverge for some seeds of the tuned grid too. A variant none of whose lrs is
  eligible for that reason is a result, `diverged at every lr: 0.0125–0.8`, never dropped.
- A cell with a seed that has not ended (missing, queued, running, failed, interrupted) at
  any of its lrs chooses nothing and says so: the missing run could have won.

Then the test accuracy of the runs at the chosen lr (mean ± 95% CI over seeds), and the
paired difference to batchnorm over the seeds both have. No torch here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import pandas as pd

from bnstudy.analysis.collect import COMPLETED, DIVERGED, ENDED, VARIANT, identity_columns, varies
from bnstudy.analysis.stats import mean_ci
from bnstudy.analysis.tables import LR
from bnstudy.records import BATCH_SIZE, DATASET, MODEL, NORM, SEED, WIDTH
from bnstudy.study.controls import BASELINE, DEFAULTS, variant_order

VARIANT_KEYS = (VARIANT, NORM, *DEFAULTS)  # what tells the variants of one cell apart


# A tuned cell takes the lr of the search cell equal in these, in its variant, and in every
# other key that takes several values in the search.
LOOKUP_KEYS = (DATASET, MODEL, WIDTH, BATCH_SIZE)


# What a tuned run may have of its own: the lr is the choice; seeds and the validation split
# (the tuned grid trains on every training image) are not the search's.
OWN_KEYS = (LR, SEED, "data.val_size")


# What a cell of the search came to.
CHOSEN = "chosen"


ALL_DIVERGED = "diverged at every lr"


UNFINISHED = "unfinished"


NO_VALIDATION = "no validation split"


class TuningError(RuntimeError):
    """A tuned result that cannot be given; the message names the cell and what to run."""


def cell_keys(runs: pd.DataFrame) -> list[str]:
    """What makes a cell of the search: every identity column but the run id, lr and seed."""
    return [c for c in identity_columns(runs) if c not in ("run_id", LR, SEED)]


def lr_scores(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per cell and lr: the seeds asked for (`asked`), how many completed and
    diverged, what has not ended (`unfinished`, e.g. `1 missing, 1 running`), whether the lr
    is `eligible` (every asked seed completed, each with a validation accuracy) and its
    `score`, the mean final validation accuracy of its seeds (NaN where not eligible)."""
    keys = cell_keys(runs)
    rows = []
    for values, group in runs.groupby([*keys, VARIANT, LR], dropna=False, sort=False):
        status = group["status"]
        done = group[status == COMPLETED]
        others = status[~status.isin(ENDED)].value_counts()
        eligible = len(done) == len(group) and done["final_val_acc"].notna().all()
        rows.append(
            {
                **dict(zip([*keys, VARIANT, LR], values, strict=True)),
                "asked": len(group),
                "completed": len(done),
                "diverged": int((status == DIVERGED).sum()),
                "unfinished": ", ".join(f"{n} {s}" for s, n in sorted(others.items())),
                "eligible": bool(eligible),
                "score": done["final_val_acc"].mean() if eligible else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def cell_choices(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per cell of the search: its `state` (CHOSEN, UNFINISHED, ALL_DIVERGED,
    NO_VALIDATION), the chosen lr and its `score` and `seeds`, and a `note`: the lrs with a
    diverged seed (`0.4 (1/3), 0.8 (3/3)`), or what is unfinished."""
    scores = lr_scores(runs)
    keys = [*cell_keys(runs), VARIANT]
    rows = []
    for values, cell in scores.groupby(keys, dropna=False, sort=False):
        row = dict(zip(keys, values, strict=True))
        cell = cell.sort_values(LR)
        diverged = cell[cell["diverged"] > 0]
        row["note"] = ", ".join(
            f"{r[LR]:g} ({r['diverged']}/{r['asked']})" for r in diverged.to_dict("records")
        )
        row["lrs"] = _lr_range(cell[LR])
        unfinished = cell[cell["unfinished"] != ""]
        eligible = cell[cell["eligible"]]
        if len(unfinished):
            row["state"] = UNFINISHED
            row["note"] = ", ".join(
                f"lr {r[LR]:g}: {r['unfinished']}" for r in unfinished.to_dict("records")
            )
        elif len(eligible):
            # Highest score first; sorted by lr before, so a tie keeps the smaller lr.
            best = eligible.sort_values("score", ascending=False, kind="stable").iloc[0]
            row.update(state=CHOSEN, score=best["score"], seeds=int(best["completed"]))
            row[LR] = best[LR]
        elif len(diverged) == len(cell):
            row["state"] = ALL_DIVERGED
        else:
            row["state"] = NO_VALIDATION
        rows.append(row)
    return pd.DataFrame(rows)


def chosen_lrs(runs: pd.DataFrame) -> pd.DataFrame:
    """The cells of the search that chose an lr (column optim.lr), with its score."""
    choices = cell_choices(runs)
    return choices[choices["state"] == CHOSEN].reset_index(drop=True)


def _lr_range(lrs: pd.Series) -> str:
    low, high = lrs.min(), lrs.max()
    return f"{low:g}" if low == high else f"{low:g}–{high:g}"


def tuned_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per cell: its state and, where an lr was chosen, the lr, its validation score and
    seeds, the test accuracy at it (mean, 95% CI half-width, n), and the paired difference to
    the baseline at its own chosen lr over shared seeds (mean, CI, n)."""
    keys = [*cell_keys(runs), VARIANT]
    done = runs[runs["status"] == COMPLETED]
    choices = cell_choices(runs)
    chosen = choices[choices["state"] == CHOSEN]
    rows = []
    for choice in choices.to_dict("records"):
        row = {k: choice[k] for k in keys}
        row.update(state=choice["state"], lrs=choice["lrs"], note=choice["note"])
        if choice["state"] == CHOSEN:
            row.update({LR: choice[LR], "val_score": choice["score"], "val_n": choice["seeds"]})
            at_lr = _runs_of(done, choice, keys)
            mean, half, n = mean_ci(at_lr["final_test_acc"])
            row.update(test_acc=mean, test_ci95=half, n=n)
            baseline = _baseline_choice(chosen, choice, keys)
            if baseline is not None and choice[VARIANT] != BASELINE:
                base_runs = _runs_of(done, baseline, keys)
                paired = at_lr.set_index(SEED)["final_test_acc"].sub(
                    base_runs.set_index(SEED)["final_test_acc"]
                )
                paired = paired.dropna()
                if len(paired):
                    diff, diff_half, pairs = mean_ci(paired)
                    row.update(diff_vs_batchnorm=diff, diff_ci95=diff_half, n_paired=pairs)
        rows.append(row)
    return pd.DataFrame(rows)


def _equal(column: pd.Series, value: object) -> pd.Series:
    """column == value, where an unset value (NaN, None) equals an unset value."""
    return (column == value) | (column.isna() & pd.isna(value))


def _runs_of(done: pd.DataFrame, choice: dict, keys: list[str]) -> pd.DataFrame:
    mask = done[LR] == choice[LR]
    for k in keys:
        mask &= _equal(done[k], choice[k])
    return done[mask]


def _baseline_choice(choices: pd.DataFrame, choice: dict, keys: list[str]) -> dict | None:
    """The baseline's chosen lr in the same setting and batch size as `choice`."""
    same = choices[choices[VARIANT] == BASELINE]
    for k in keys:
        if k not in VARIANT_KEYS:
            same = same[_equal(same[k], choice[k])]
    return same.iloc[0].to_dict() if len(same) else None


def _format(value: object, digits: int = 2) -> str:
    return "" if value is None or pd.isna(value) else f"{value:.{digits}f}"


# The tuned table's columns as printed.
CHOICE_COLUMN = "lr (chosen on val)"


VAL_COLUMN = "val acc % (mean, seeds)"


TEST_COLUMN = "test acc % (mean ± 95% t-CI, seeds)"


DIFF_COLUMN = "Δ vs batchnorm (paired ± 95% t-CI, seeds)"


RULED_OUT_COLUMN = "lrs ruled out: diverged seeds"


def tuned_cells(table: pd.DataFrame) -> Iterable[tuple[str, pd.DataFrame]]:
    """The tuned table as one readable table per setting and batch size, baseline first; the
    title names dataset, model, batch size and every other key that varies. A cell that chose
    no lr says why in its lr column (`diverged at every lr: 0.0125–0.8`, `unfinished: …`)."""
    setting = [c for c in table.columns if c in _identity(table) and c not in VARIANT_KEYS]
    varying = [c for c in setting if varies(table, c)]
    shown_keys = [k for k in (DATASET, MODEL, WIDTH, BATCH_SIZE) if k in setting]
    shown_keys += [k for k in varying if k not in shown_keys]
    for values, group in table.groupby(setting, dropna=False, sort=True):
        named = dict(zip(setting, values, strict=True))
        title = ", ".join(f"{k}={named[k]}" for k in shown_keys)
        rows = group.to_dict("records")
        shown = pd.DataFrame(
            {
                CHOICE_COLUMN: [_choice_text(r) for r in rows],
                VAL_COLUMN: [_val_text(r) for r in rows],
                TEST_COLUMN: [_test_text(r) for r in rows],
                DIFF_COLUMN: [_diff_text(r) for r in rows],
                RULED_OUT_COLUMN: [r["note"] if r["state"] != UNFINISHED else "" for r in rows],
            },
            index=pd.Index(group[VARIANT], name="variant"),
        )
        yield title, shown.reindex(variant_order(shown.index))


def _identity(table: pd.DataFrame) -> set[str]:
    results = {LR, "val_score", "val_n", "test_acc", "test_ci95", "n", "state", "lrs", "note"}
    return set(table.columns) - results - {"diff_vs_batchnorm", "diff_ci95", "n_paired"}


def _choice_text(row: dict) -> str:
    if row["state"] == CHOSEN:
        return f"{row[LR]:g}"
    if row["state"] == ALL_DIVERGED:
        return f"{ALL_DIVERGED}: {row['lrs']}"
    if row["state"] == UNFINISHED:
        return f"{UNFINISHED}: {row['note']}"
    return f"{NO_VALIDATION} (data.val_size=0)"


def _val_text(row: dict) -> str:
    if row["state"] != CHOSEN:
        return ""
    return f"{_format(row['val_score'])} (n={int(row['val_n'])})"


def _test_text(row: dict) -> str:
    if row["state"] != CHOSEN or pd.isna(row.get("test_acc")):
        return ""
    half = row["test_ci95"]
    n = int(row["n"])
    if n < 2 or half is None or (isinstance(half, float) and math.isnan(half)):
        return f"{row['test_acc']:.2f} (1 seed)"
    return f"{row['test_acc']:.2f} ± {half:.2f} (n={n})"


def _diff_text(row: dict) -> str:
    if row.get(VARIANT) == BASELINE or pd.isna(row.get("diff_vs_batchnorm", float("nan"))):
        return ""
    half = row.get("diff_ci95")
    ci = f" ± {_format(half)}" if not pd.isna(half) else ""
    return f"{row['diff_vs_batchnorm']:+.2f}{ci} (n={int(row['n_paired'])})"
