"""The controls that separate initialization from normalization: their choices and defaults,
and a readable name for a run's variant. No torch here (bnstudy.results reads it).

| key | choices (default first) | isolates |
| norm.init | ones, data | BatchNorm's starting point without its normalization (affine) |
| model.init | kaiming, lsuv | a good start with no per-channel parameters at all |
| model.zero_init_residual | false, true | residual branches that start at zero |
| norm.params | both, scale, shift | the scale or the shift alone |
| norm.freeze_after | unset, K | normalization for the first K epochs only |
| norm.fold_into | frozen_norm, affine | after the fold: γ, β on fixed statistics, or γ', β' |
| norm.fold_stats | population, running | the fold's statistics: the training set's, or EMAs |
| norm.fold_momentum | map, reset | γ/β optimizer state at the fold: mapped, or afresh |
| trainer.train_only | all, norm | what γ and β achieve on random, frozen convs |
| optim.norm_weight_decay | = optim.weight_decay, any | decay on γ and β apart from the convs' |
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

CHOICES: dict[str, tuple[str, ...]] = {
    "norm.init": ("ones", "data"),
    "model.init": ("kaiming", "lsuv"),
    "norm.params": ("both", "scale", "shift"),
    "trainer.train_only": ("all", "norm"),
    # What a fold (norm.freeze_after) leaves: see bnstudy/study/init.py fold_norms.
    "norm.fold_into": ("frozen_norm", "affine"),
    "norm.fold_stats": ("population", "running"),
    "norm.fold_momentum": ("map", "reset"),
}


FOLD_KEYS = ("norm.fold_into", "norm.fold_stats", "norm.fold_momentum")


# Controls whose default is another key's value: optim.norm_weight_decay follows
# optim.weight_decay unless set apart (then the run is a variant: `batchnorm +
# optim.norm_weight_decay=0`).
SAME_AS: dict[str, str] = {"optim.norm_weight_decay": "optim.weight_decay"}


# Every control's default; a run's variant is its norm plus the controls that differ from it.
# In the order a label names them (`batchnorm + norm.freeze_after=1 + norm.fold_stats=running`).
DEFAULTS: dict[str, object] = {
    **{key: choices[0] for key, choices in CHOICES.items() if key not in FOLD_KEYS},
    "model.zero_init_residual": False,
    "norm.freeze_after": None,
    **{key: CHOICES[key][0] for key in FOLD_KEYS},
    **dict.fromkeys(SAME_AS),  # the value of SAME_AS[key] in each run
}


BASELINE = "batchnorm"  # the variant every other is compared with, first in tables and figures


def variant_order(labels: Iterable[str]) -> list[str]:
    """Variant labels in the order of every table and figure: the baseline, then its
    ablations (`batchnorm + …`), then the others alphabetically."""
    return sorted(set(labels), key=lambda label: (label.split(" + ")[0] != BASELINE, label))


def variant_label(values: Mapping[str, object]) -> str:
    """`affine`, `affine + norm.init=data`, `none + model.init=lsuv`, … from a run's identity
    (flattened keys); missing or empty values count as the default."""
    changed = []
    for key, default in DEFAULTS.items():
        if key in SAME_AS:
            default = _unset(values.get(SAME_AS[key]))
        value = _unset(values.get(key, default))
        if not _same(value, default):
            changed.append(f"{key}={_text(value)}")
    return " + ".join([str(values["norm.name"]), *changed])


def _unset(value: object) -> object:
    """None for the ways a missing value arrives (None, "", NaN from a CSV)."""
    return None if value is None or value == "" or _is_nan(value) else value


def _same(value: object, default: object) -> bool:
    """Equal as values or as text (5e-4 == 0.0005; 1.0 from a CSV == 1)."""
    if value == default or str(value) == str(default):
        return True
    try:
        return float(value) == float(default)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _is_nan(value: object) -> bool:
    return isinstance(value, float) and value != value


def _text(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # freeze_after read back from CSV as 1.0
    return str(value).lower() if isinstance(value, bool) else str(value)
