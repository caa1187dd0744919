"""Run folders and what is written in them: metrics.csv, summary.csv, checkpoints, status.

A run's folder is a pure function of its config (`run_path`), so rerunning a config finds its
earlier run. Every file is written to a temporary name and renamed over the old one, so a
crash at any instant leaves either the old or the new content.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

# Re-exported: the run folder's file helpers are part of the records' interface.
from bnstudy.files import (  # noqa: F401
    RecordsError,
    append_csv,
    held,
    read_csv,
    write_atomic,
    write_csv,
)


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


# Config keys that say where or how visibly a run happens, not what it computes: changing them
# finds the same run folder (a run started on one GPU can finish on another). Every other key
# of the resolved config is part of the run's identity.
NON_IDENTITY_KEYS = (
    "hydra",
    "paths",
    "tuning",  # where a tuned lr was read from; the lr itself is part of the identity
    "device",
    "dataset.root",
    "dataset.download",
    "trainer.progress",
    "trainer.log_every",
    "trainer.diagnostics",  # records more, computes the same
    "trainer.tensorboard",
    # Speed only: the same numbers up to floating-point rounding.
    "trainer.channels_last",
    "trainer.compile",
    "trainer.cudnn_benchmark",
    "trainer.deterministic",
    "data.eval_batch_size",
)
# The identity keys that name a run's folder and head the results' tables.
DATASET, MODEL, WIDTH, NORM = "dataset.name", "model.name", "model.width", "norm.name"
BATCH_SIZE, SEED = "batch_size", "seed"

EPOCH_COLUMNS = tuple(f.name for f in fields(EpochMetrics))
LAYER_COLUMNS = tuple(f.name for f in fields(LayerStats))
SUMMARY_COLUMNS = tuple(f.name for f in fields(Summary))
FINISHED = ("completed", "diverged")  # a rerun of these is a no-op
# Summary.diverged_reason: the optimization blew up, or only the number format (fp16/bf16).
OPTIMIZATION, NUMBER_FORMAT = "optimization", "number format"

METRICS_FILE = "metrics.csv"
LAYERS_FILE = "layers.csv"
SUMMARY_FILE = "summary.csv"
CHECKPOINT_FILE = "checkpoint.pt"
MODEL_FILE = "model.pt"
LOCK_FILE = "run.lock"


def _flatten(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if dotted in NON_IDENTITY_KEYS:
            continue
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """`run_id`, then every value of the resolved config (a plain dict) that can change the
    run's numbers, flattened to dotted keys (optim.weight_decay). These head every row of
    metrics.csv and summary.csv, so files from many runs concatenate without any other source,
    and two runs that differ in any of them never share a folder, a hash or a table cell."""
    flat = _flatten(config)
    text = json.dumps(flat, sort_keys=True, default=str)
    return {"run_id": hashlib.sha256(text.encode()).hexdigest()[:8], **flat}


def run_id(config: Mapping[str, Any]) -> str:
    """Eight hex digits that change whenever a value that affects the results changes."""
    return identity(config)["run_id"]


def run_path(config: Mapping[str, Any]) -> str:
    """The run folder, relative to paths.output_root: readable, and unique per config."""
    i = identity(config)
    name = f"{i[MODEL]}-w{i[WIDTH]}-{i[NORM]}-bs{i[BATCH_SIZE]}-seed{i[SEED]}"
    return f"{i[DATASET]}/{name}-{i['run_id']}"


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


# ---------------------------------------------------------------------------- run folder


class RunFolder:
    """One run's folder: its CSV records, checkpoint and lock."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def layers_path(self) -> Path:
        return self.path / LAYERS_FILE

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT_FILE

    def read_summary(self) -> dict[str, str] | None:
        rows = read_csv(self.summary_path)
        return rows[0] if rows else None

    def write_summary(self, ident: Mapping[str, Any], summary: Summary) -> None:
        row = {**ident, **asdict(summary)}
        write_csv(self.summary_path, tuple(row), [row])

    def read_metrics(self) -> list[EpochMetrics]:
        """The epochs on disk; a damaged file is a RecordsError naming it."""
        return self._read(self.metrics_path, EpochMetrics)

    def write_metrics(self, ident: Mapping[str, Any], epochs: list[EpochMetrics]) -> None:
        self._write(self.metrics_path, ident, EPOCH_COLUMNS, epochs)

    def read_layers(self) -> list[LayerStats]:
        """The per-layer diagnostics on disk (layers.csv); a damaged file is a RecordsError."""
        return self._read(self.layers_path, LayerStats)

    def write_layers(self, ident: Mapping[str, Any], rows: list[LayerStats]) -> None:
        self._write(self.layers_path, ident, LAYER_COLUMNS, rows)

    def append_layers(self, ident: Mapping[str, Any], rows: list[LayerStats]) -> None:
        """One epoch's rows at the end of layers.csv: a deep model's file grows by thousands
        of rows over a run, and rewriting it every epoch would cost more than the epoch."""
        self._write(self.layers_path, ident, LAYER_COLUMNS, rows, write=append_csv)

    def _read(self, path: Path, record: type) -> list[Any]:
        try:
            return [from_csv(record, row) for row in read_csv(path)]
        except (KeyError, ValueError, TypeError) as e:
            raise RecordsError(
                f"{path}: damaged ({type(e).__name__}: {e}); move the run folder "
                "away to train this config again"
            ) from None

    @staticmethod
    def _write(
        path: Path, ident: Mapping[str, Any], columns: tuple, items: list, write=write_csv
    ) -> None:
        """Rows of `items` (records), each headed by the run's identity, written (or
        appended, with `write=append_csv`) under the identity and `columns`."""
        write(path, (*ident, *columns), [{**ident, **asdict(item)} for item in items])

    def check_owner(self, expected_run_id: str) -> None:
        """Refuse to touch a folder that holds another config's run."""
        summary = self.read_summary()
        if summary is not None and summary.get("run_id") != expected_run_id:
            raise RecordsError(
                f"{self.path} holds run {summary.get('run_id')!r}, not {expected_run_id!r}; "
                "move that folder away or choose another paths.output_root"
            )

    # torch is imported where it is used so that `bnstudy.results` can read records without it.

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        import torch

        buffer = io.BytesIO()
        torch.save(state, buffer)
        write_atomic(self.checkpoint_path, buffer.getvalue())

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The last checkpoint, loaded with weights_only=True: tensors and plain data only."""
        import pickle

        import torch

        if not self.checkpoint_path.is_file():
            return None
        try:
            with warnings.catch_warnings():  # torch warns about files it then refuses anyway
                warnings.simplefilter("ignore")
                state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            # torch's message advises weights_only=False, i.e. running the file's code: never.
            raise RecordsError(
                f"{self.checkpoint_path}: refused: it holds objects other than tensors and plain "
                "data (not a bnstudy checkpoint, or tampered with); delete it to restart the run"
            ) from None
        except Exception as e:  # torch raises several kinds for truncated or corrupt files
            raise RecordsError(
                f"{self.checkpoint_path}: cannot be read ({type(e).__name__}: corrupt or "
                "truncated); delete it to restart the run"
            ) from None
        if not isinstance(state, dict):
            raise RecordsError(
                f"{self.checkpoint_path}: not a bnstudy checkpoint; delete it to restart the run"
            )
        return state

    def save_model(self, state_dict: dict[str, Any]) -> None:
        """Keep the final weights (the checkpoint goes only once the summary says completed)."""
        import torch

        buffer = io.BytesIO()
        torch.save(state_dict, buffer)
        write_atomic(self.path / MODEL_FILE, buffer.getvalue())

    def drop_checkpoint(self) -> None:
        """Remove the checkpoint of a finished run (it also holds the optimizer state)."""
        self.checkpoint_path.unlink(missing_ok=True)

    def is_held(self) -> bool:
        """Whether a live process holds this folder's lock (is training this run now)."""
        if not (self.path / LOCK_FILE).is_file():
            return False
        with held(self.path / LOCK_FILE) as ours:
            return not ours

    @contextmanager
    def lock(self) -> Iterator[bool]:
        """Hold the folder's lock; yields False when another process holds it."""
        self.path.mkdir(parents=True, exist_ok=True)
        with held(self.path / LOCK_FILE) as ours:
            if ours:
                # Temporary files left by a writer that was killed mid-write: only the lock
                # holder writes here, so none of them is in use.
                for stale in self.path.glob(".*.tmp*"):
                    stale.unlink(missing_ok=True)
            yield ours
