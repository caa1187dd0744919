"""One run's folder: metrics.csv, layers.csv, summary.csv, the checkpoint, the final model and
the lock that keeps two processes out of one run. Every file is written to a temporary name
and renamed over the old one, so a crash at any instant leaves either the old or the new
content.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bnstudy.records.fields import (
    EPOCH_COLUMNS,
    LAYER_COLUMNS,
    EpochMetrics,
    LayerStats,
    Summary,
    from_csv,
)

# Re-exported: the run folder's file helpers are part of the records' interface.
from bnstudy.records.files import RecordsError, append_csv, held, read_csv, write_atomic, write_csv

METRICS_FILE = "metrics.csv"


LAYERS_FILE = "layers.csv"


SUMMARY_FILE = "summary.csv"


CHECKPOINT_FILE = "checkpoint.pt"


MODEL_FILE = "model.pt"


LOCK_FILE = "run.lock"


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
