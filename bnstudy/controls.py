"""The controls that separate initialization from normalization: their choices and defaults,
and a readable name for a run's variant. No torch here (bnstudy.results reads it).

| key | choices (default first) | isolates |
| norm.init | ones, data | BatchNorm's starting point without its normalization (affine) |
| model.init | kaiming, lsuv | a good start with no per-channel parameters at all |
| model.zero_init_residual | false, true | residual branches that start at zero |
| norm.params | both, scale, shift | the scale or the shift alone |
| norm.freeze_after | unset, K | normalization for the first K epochs only |
| trainer.train_only | all, norm | what γ and β achieve on random, frozen convs |
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

CHOICES: dict[str, tuple[str, ...]] = {
    "norm.init": ("ones", "data"),
    "model.init": ("kaiming", "lsuv"),
    "norm.params": ("both", "scale", "shift"),
    "trainer.train_only": ("all", "norm"),
}
# Every control's default; a run's variant is its norm plus the controls that differ from it.
DEFAULTS: dict[str, object] = {
    **{key: choices[0] for key, choices in CHOICES.items()},
    "model.zero_init_residual": False,
    "norm.freeze_after": None,
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
        value = values.get(key, default)
        if value is None or value == "" or _is_nan(value):
            value = None
        if value != default and str(value) != str(default):
            changed.append(f"{key}={_text(value)}")
    return " + ".join([str(values["norm.name"]), *changed])


def _is_nan(value: object) -> bool:
    return isinstance(value, float) and value != value


def _text(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # freeze_after read back from CSV as 1.0
    return str(value).lower() if isinstance(value, bool) else str(value)
