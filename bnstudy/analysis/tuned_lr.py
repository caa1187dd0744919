"""The lr a tuned run trains at (tuning=tuned, experiment=paper_tuned): its cell's choice in an
lr search, found by the keys that tell the search's cells apart; refused, in one line that
names the cell, where the search has no such cell, is unfinished, diverged at every lr or has
no validation split.
"""

from __future__ import annotations

import math

import pandas as pd

from bnstudy.analysis.collect import VARIANT, varies
from bnstudy.analysis.tables import LR
from bnstudy.analysis.tuning import (
    ALL_DIVERGED,
    LOOKUP_KEYS,
    NO_VALIDATION,
    OWN_KEYS,
    UNFINISHED,
    VARIANT_KEYS,
    TuningError,
    cell_choices,
    cell_keys,
)


def lr_for(search: pd.DataFrame, cell: dict) -> float:
    """The lr chosen in `search` (the runs of an lr search, with those it asked for that have
    no folder) for `cell` (a tuned run's identity values): the search cell with the same
    variant, dataset, model, width, batch size and value of every other key that varies in
    the search. TuningError, naming the cell, where there is none or several, or where the
    search is unfinished, diverged at every lr, or has no validation split."""
    choices = cell_choices(search)
    matched = [*LOOKUP_KEYS]
    matched += [
        k
        for k in cell_keys(search)
        if k not in (*matched, *OWN_KEYS, *VARIANT_KEYS) and k in cell and varies(search, k)
    ]
    mask = choices[VARIANT] == cell[VARIANT]
    for key in matched:
        mask &= _matches(choices[key], cell[key])
    found = choices[mask]
    what = ", ".join(f"{k}={cell[k]}" for k in (*matched, VARIANT))
    if found.empty:
        raise TuningError(f"no lr search for {what}; run it first with tuning=search")
    if len(found) > 1:
        raise TuningError(
            f"{len(found)} lr searches with other settings match {what}; point tuning.from at "
            "the folder of one"
        )
    choice = found.iloc[0]
    if choice["state"] == UNFINISHED:
        raise TuningError(
            f"the lr search for {what} is unfinished ({choice['note']}); rerun its command to "
            "finish it first"
        )
    if choice["state"] == ALL_DIVERGED:
        raise TuningError(
            f"the lr search for {what} diverged at every lr ({choice['lrs']}): no lr to train "
            "it at; search lower lrs (optim.lr=…) or leave the variant out"
        )
    if choice["state"] == NO_VALIDATION:
        raise TuningError(
            f"the lr search for {what} has no validation accuracy; search with data.val_size>0"
        )
    return float(choice[LR])


def _matches(column: pd.Series, value: object) -> pd.Series:
    """column == value for a config value against values read back from CSV files: unset
    equals unset, numbers compare as numbers (64 == 64.0), the rest as text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return column.isna()
    if isinstance(value, bool) or not isinstance(value, int | float):
        return column.astype(str) == str(value)
    return pd.to_numeric(column, errors="coerce") == float(value)
