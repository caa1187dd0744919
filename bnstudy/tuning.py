"""A fair comparison: each variant at its own learning rate, chosen on validation.

From a folder of runs that differ in `optim.lr` (experiment=lr_search), per cell (a setting,
a variant, a batch size): the validation score of each lr (mean final validation accuracy
over completed seeds; an lr with a diverged seed scores as diverged), the lr chosen on it,
the test accuracy of the runs at that lr (mean ± 95% CI over seeds), and the paired
difference to batchnorm over the seeds both have. No torch here.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from bnstudy.collect import VARIANT, identity_columns
from bnstudy.controls import BASELINE, DEFAULTS, variant_order
from bnstudy.records import BATCH_SIZE, DATASET, MODEL, NORM, SEED, WIDTH
from bnstudy.stats import ci_text, mean_ci

LR = "optim.lr"
VARIANT_KEYS = (VARIANT, NORM, *DEFAULTS)  # what tells the variants of one cell apart
# paper_tuned takes the lr of the search cell equal in these (and the variant).
LOOKUP_KEYS = (DATASET, MODEL, WIDTH, BATCH_SIZE)


class TuningError(RuntimeError):
    """A tuned result that cannot be given; the message names the cell and what to run."""


def cell_keys(runs: pd.DataFrame) -> list[str]:
    """What makes a cell of the search: every identity column but the run id, lr and seed."""
    return [c for c in identity_columns(runs) if c not in ("run_id", LR, SEED)]


def lr_scores(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per cell and lr: its validation score, seeds and status. `score` is the mean
    final validation accuracy of its completed seeds; NaN when a seed diverged (a diverged lr
    never wins) or none completed."""
    keys = cell_keys(runs)
    rows = []
    for values, group in runs.groupby([*keys, VARIANT, LR], dropna=False, sort=False):
        done = group[group["status"] == "completed"]
        diverged = (group["status"] == "diverged").any()
        score = done["final_val_acc"].mean() if len(done) and not diverged else float("nan")
        rows.append(
            {
                **dict(zip([*keys, VARIANT, LR], values, strict=True)),
                "score": score,
                "seeds": len(done),
                "diverged": bool(diverged),
            }
        )
    return pd.DataFrame(rows)


def chosen_lrs(runs: pd.DataFrame) -> pd.DataFrame:
    """Per cell the lr with the highest validation score (the smaller lr on a tie); cells
    whose every lr diverged or has no completed seed are left out."""
    scores = lr_scores(runs).dropna(subset=["score"])
    keys = [*cell_keys(runs), VARIANT]
    ordered = scores.sort_values([LR]).sort_values("score", ascending=False, kind="stable")
    return ordered.drop_duplicates(keys).reset_index(drop=True)


def tuned_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per cell: chosen lr, test accuracy at it (mean, 95% CI half-width, n), and the paired
    difference to the baseline at its own chosen lr over shared seeds (mean, CI, n)."""
    keys = [*cell_keys(runs), VARIANT]
    done = runs[runs["status"] == "completed"]
    rows = []
    choices = chosen_lrs(runs)
    for choice in choices.to_dict("records"):
        at_lr = _runs_of(done, choice, keys)
        mean, half, n = mean_ci(at_lr["final_test_acc"])
        row = {**{k: choice[k] for k in keys}, LR: choice[LR], "val_score": choice["score"]}
        row.update(test_acc=mean, test_ci95=half, n=n)
        baseline = _baseline_choice(choices, choice, keys)
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


def tuned_cells(table: pd.DataFrame) -> Iterable[tuple[str, pd.DataFrame]]:
    """The tuned table as one readable table per setting and batch size, baseline first; the
    title names dataset, model, batch size and every other key that varies."""
    setting = [c for c in table.columns if c in _identity(table) and c not in VARIANT_KEYS]
    varying = [c for c in setting if table[c].nunique(dropna=False) > 1]
    shown_keys = [k for k in (DATASET, MODEL, WIDTH, BATCH_SIZE) if k in setting]
    shown_keys += [k for k in varying if k not in shown_keys]
    for values, group in table.groupby(setting, dropna=False, sort=True):
        named = dict(zip(setting, values, strict=True))
        title = ", ".join(f"{k}={named[k]}" for k in shown_keys)
        shown = pd.DataFrame(
            {
                "lr (chosen on val)": [f"{v:g}" for v in group[LR]],
                "val acc %": [_format(v) for v in group["val_score"]],
                "test acc % (mean ± 95% CI)": [
                    ci_text(m, h)
                    for m, h in zip(group["test_acc"], group["test_ci95"], strict=True)
                ],
                "n": list(group["n"]),
                "Δ vs batchnorm (paired ± 95% CI)": [
                    _diff_text(r) for r in group.to_dict("records")
                ],
            },
            index=pd.Index(group[VARIANT], name="variant"),
        )
        yield title, shown.reindex(variant_order(shown.index))


def _identity(table: pd.DataFrame) -> set[str]:
    results = {LR, "val_score", "test_acc", "test_ci95", "n"}
    return set(table.columns) - results - {"diff_vs_batchnorm", "diff_ci95", "n_paired"}


def _diff_text(row: dict) -> str:
    if row.get(VARIANT) == BASELINE or pd.isna(row.get("diff_vs_batchnorm", float("nan"))):
        return ""
    half = row.get("diff_ci95")
    ci = f" ± {_format(half)}" if not pd.isna(half) else ""
    return f"{row['diff_vs_batchnorm']:+.2f}{ci} (n={int(row['n_paired'])})"


def lr_for(search: pd.DataFrame, cell: dict) -> float:
    """The lr chosen in `search` (a runs frame) for `cell` (a run's identity values): the
    search cell with the same dataset, model, width, batch size and variant. TuningError if
    there is none, or several (two searches with other settings)."""
    choices = chosen_lrs(search)
    mask = choices[VARIANT] == cell[VARIANT]
    for key in LOOKUP_KEYS:
        mask &= choices[key].astype(str) == str(cell[key])
    found = choices[mask]
    what = ", ".join(f"{k}={cell[k]}" for k in (*LOOKUP_KEYS, VARIANT))
    if found.empty:
        raise TuningError(f"no completed lr search for {what}; run experiment=lr_search first")
    if len(found) > 1:
        raise TuningError(
            f"{len(found)} lr searches with other settings match {what}; point tuning.from at "
            "the folder of one"
        )
    return float(found.iloc[0][LR])
