"""Run folders and what is written in them: metrics.csv, summary.csv, checkpoints, status.

A run's folder is a pure function of its config (`run_path`), so rerunning a config finds its
earlier run. Every file is written to a temporary name and renamed over the old one, so a
crash at any instant leaves either the old or the new content.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class EpochMetrics:
    """What one epoch measured; accuracies in percent."""

    epoch: int
    train_loss: float
    train_acc: float
    test_loss: float
    test_acc: float
    epoch_lr: float
    epoch_seconds: float
    train_images_per_s: float


# Identity columns -> their config key. These head every row of metrics.csv and summary.csv, so
# files from many runs concatenate without any other source.
IDENTITY_KEYS: dict[str, str] = {
    "dataset": "dataset.name",
    "model": "model.name",
    "width": "model.width",
    "norm": "norm.name",
    "batch_size": "batch_size",
    "seed": "seed",
    "optimizer": "optim.name",
    "lr": "optim.lr",
    "epochs": "trainer.epochs",
}
# Config keys that say where or how visibly a run happens, not what it computes: changing them
# finds the same run folder (a run started on one GPU can finish on another).
NON_IDENTITY_KEYS = (
    "paths",
    "device",
    "dataset.root",
    "dataset.download",
    "trainer.progress",
    "trainer.log_every",
    # Speed only: the same numbers up to floating-point rounding.
    "trainer.channels_last",
    "trainer.compile",
    "trainer.cudnn_benchmark",
    "data.eval_batch_size",
)

EPOCH_COLUMNS = tuple(f.name for f in fields(EpochMetrics))
METRICS_COLUMNS = ("run_id", *IDENTITY_KEYS, *EPOCH_COLUMNS)
SUMMARY_COLUMNS = (
    "run_id",
    *IDENTITY_KEYS,
    "status",
    "epochs_done",
    "diverged_epoch",
    "error",
    "final_test_acc",
    "best_test_acc",
    "best_epoch",
    "final_train_loss",
    "n_params",
    "n_norm_params",
    "wall_seconds",
    "device",
    "precision",
    "torch_version",
    "torchvision_version",
    "hydra_version",
    "python_version",
    "started_at",
    "updated_at",
)
FINISHED = ("completed", "diverged")  # a rerun of these is a no-op

METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.csv"
CHECKPOINT_FILE = "checkpoint.pt"
MODEL_FILE = "model.pt"
LOCK_FILE = "run.lock"


class RecordsError(RuntimeError):
    """A run folder that cannot be used as asked; the message names the folder."""


def _select(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = node[part]
    return node


def identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """The identity columns of a run, from its resolved config (a plain dict)."""
    return {column: _select(config, key) for column, key in IDENTITY_KEYS.items()}


def run_id(config: Mapping[str, Any]) -> str:
    """Eight hex digits that change whenever a value that affects the results changes."""
    kept = json.loads(json.dumps(dict(config), default=str))
    kept.pop("hydra", None)
    for dotted in NON_IDENTITY_KEYS:
        *parents, leaf = dotted.split(".")
        node = kept
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)
    text = json.dumps(kept, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def run_path(config: Mapping[str, Any]) -> str:
    """The run folder, relative to paths.output_root: readable, and unique per config."""
    i = identity(config)
    name = f"{i['model']}-w{i['width']}-{i['norm']}-bs{i['batch_size']}-seed{i['seed']}"
    return f"{i['dataset']}/{name}-{run_id(config)}"


def progress(rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The summary's view of a run's epoch rows: epochs done, final and best accuracy."""
    if not rows:
        return {
            "epochs_done": 0,
            "final_test_acc": None,
            "best_test_acc": None,
            "best_epoch": None,
            "final_train_loss": None,
        }
    accs = [float(r["test_acc"]) for r in rows]
    best = max(range(len(accs)), key=accs.__getitem__)  # the first epoch of the best value
    return {
        "epochs_done": len(rows),
        "final_test_acc": accs[-1],
        "best_test_acc": accs[best],
        "best_epoch": rows[best]["epoch"],
        "final_train_loss": rows[-1]["train_loss"],
    }


# ------------------------------------------------------------------------- atomic files


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that readers (and crashes) see old or new, never half.

    A write that fails (disk full, no permission) leaves the old file and no temporary behind,
    and raises RecordsError naming the file.
    """
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise RecordsError(
            f"cannot write {path}: {e.strerror or e}; free some space or make the folder "
            "writable, or choose another paths.output_root"
        ) from e


def write_csv(path: Path, columns: tuple[str, ...], rows: list[Mapping[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({c: _cell(row.get(c)) for c in columns} for row in rows)
    write_atomic(path, buffer.getvalue().encode())


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # full precision, so reruns can be compared exactly
    return value


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
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT_FILE

    def read_summary(self) -> dict[str, str] | None:
        rows = read_csv(self.summary_path)
        return rows[0] if rows else None

    def write_summary(self, row: Mapping[str, Any]) -> None:
        write_csv(self.summary_path, SUMMARY_COLUMNS, [row])

    def read_metrics(self) -> list[dict[str, str]]:
        return read_csv(self.metrics_path)

    def write_metrics(self, rows: list[Mapping[str, Any]]) -> None:
        write_csv(self.metrics_path, METRICS_COLUMNS, rows)

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
        try:
            with open(self.path / LOCK_FILE) as f:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
                fcntl.flock(f, fcntl.LOCK_UN)
        except FileNotFoundError:
            return False
        except BlockingIOError:
            return True
        return False

    @contextmanager
    def lock(self) -> Iterator[bool]:
        """Hold the folder's lock; yields False when another process holds it."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / LOCK_FILE, "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            # Temporary files left by a writer that was killed mid-write: only the lock
            # holder writes here, so none of them is in use.
            for stale in self.path.glob(".*.tmp*"):
                stale.unlink(missing_ok=True)
            try:
                yield True
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
