"""What a run's files hold: one epoch's metrics (metrics.csv), one layer's statistics
(layers.csv) and the run's summary (summary.csv), as dataclasses whose fields are the columns,
and the summary's view of a run's epochs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class EpochMetrics:
    """What one epoch measured; accuracies in percent. The validation columns are None when
    the run holds out no validation split (data.val_size=0)."""

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float | None
    val_acc: float | None
    test_loss: float
    test_acc: float
    epoch_lr: float
    epoch_seconds: float
    train_images_per_s: float


SMALL_GAMMA = 0.01  # |γ| below this: a channel its layer has all but switched off


# The kinds of layers.csv rows that carry a signal: the stem, the residual blocks and the
# classifier's output (the logits); the other kind, norm, carries γ and β.
SIGNAL_KINDS = ("stem", "block", "logits")


@dataclass(frozen=True)
class LayerStats:
    """One row of layers.csv: a norm layer's γ and β, or a site's signal and gradient, after
    `epoch` (0: at init). Columns that do not apply to the row's kind are None."""

    epoch: int
    layer: str  # module path: stem, stages.2.0, stages.2.0.norm1, fc
    kind: str  # norm, stem, block or logits
    stage: int  # 0 the stem, 1..4 the stages, 5 the classifier (stage_name)
    depth: int  # 0 the stem, 1..N the residual blocks in network order, N+1 the classifier
    channels: int  # of the norm layer, or of the site's output
    gamma_mean: float | None = None
    gamma_std: float | None = None
    gamma_min: float | None = None
    gamma_max: float | None = None
    gamma_small: float | None = None  # fraction of channels with |γ| < SMALL_GAMMA
    beta_mean: float | None = None
    beta_std: float | None = None
    act_mean: float | None = None  # of the site's output on the probe batch
    act_std: float | None = None
    grad_norm: float | None = None  # L2 norm of the site's weight gradients, all together
    groups: int | None = None  # of a GroupNorm layer: the groups it normalizes over


def stage_name(stage: int) -> str:
    """A layers.csv stage in words: the stem, stage 1..4, the classifier (after the last)."""
    return {0: "stem", 5: "classifier"}.get(stage, f"stage {stage}")


def from_csv(cls: type, row: Mapping[str, str]) -> Any:
    """A record (EpochMetrics, LayerStats) as a CSV row holds it (strings) back as values:
    int and str fields as such, the others as floats, empty as None."""
    values: dict[str, Any] = {}
    for f in fields(cls):
        text = row[f.name]
        if f.type in ("int", "str"):
            values[f.name] = int(text) if f.type == "int" else text
        else:
            values[f.name] = float(text) if text else None
    return cls(**values)


@dataclass(frozen=True)
class Summary:
    """summary.csv's one row after the identity columns. Accuracies in percent; "best" is
    always chosen on the validation split, never on the test set."""

    status: str  # running, completed, diverged, failed, interrupted
    epochs_done: int = 0
    diverged_epoch: int | None = None
    # Why it diverged: OPTIMIZATION, or NUMBER_FORMAT (non-finite only in fp16/bf16).
    diverged_reason: str = ""
    error: str = ""
    final_test_acc: float | None = None
    final_val_acc: float | None = None
    best_val_acc: float | None = None
    best_val_epoch: int | None = None
    test_acc_at_best_val: float | None = None  # test accuracy of the best validation epoch
    final_train_loss: float | None = None
    n_params: int | None = None
    n_norm_params: int | None = None  # learnable parameters inside normalization layers
    norm_groups: str = ""  # GroupNorm's `channels:groups` per layer width (norms.group_counts)
    wall_seconds: float = 0.0  # summed over resumed sessions
    device: str = ""
    cpu: str = ""  # the processor (the machine names it)
    cpu_isa: str = ""  # the CPU kernels in use: AVX2 (portable on x86-64), AVX512, …
    torch_version: str = ""
    torchvision_version: str = ""
    hydra_version: str = ""
    python_version: str = ""
    started_at: str = ""
    updated_at: str = ""


EPOCH_COLUMNS = tuple(f.name for f in fields(EpochMetrics))


LAYER_COLUMNS = tuple(f.name for f in fields(LayerStats))


SUMMARY_COLUMNS = tuple(f.name for f in fields(Summary))


FINISHED = ("completed", "diverged")  # a rerun of these is a no-op


# Summary.diverged_reason: the optimization blew up, or only the number format (fp16/bf16).
OPTIMIZATION, NUMBER_FORMAT = "optimization", "number format"


def progress(epochs: list[EpochMetrics]) -> dict[str, Any]:
    """The summary's view of a run's epochs: epochs done, final accuracies, and the test
    accuracy at the epoch of best validation accuracy (the first, on ties)."""
    if not epochs:
        return {"epochs_done": 0}
    last = epochs[-1]
    view: dict[str, Any] = {
        "epochs_done": len(epochs),
        "final_test_acc": last.test_acc,
        "final_val_acc": last.val_acc,
        "final_train_loss": last.train_loss,
    }
    validated = [m for m in epochs if m.val_acc is not None]
    if validated:
        best = max(validated, key=lambda m: m.val_acc)  # max keeps the first of equals
        view.update(
            best_val_acc=best.val_acc, best_val_epoch=best.epoch, test_acc_at_best_val=best.test_acc
        )
    return view
