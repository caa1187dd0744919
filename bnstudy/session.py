"""One run's lifecycle, from a checked config to its records: the run folder's lock, the
device, the parts (data, model, optimizer), resuming from a checkpoint, the fold, the epoch
loop, and the status that every way out of a run leaves in summary.csv. `bnstudy.run` calls
`execute`; this module imports torch, the command line does not.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import hydra
import torch
import torchvision
from omegaconf import DictConfig

from bnstudy import records
from bnstudy.config import preflight
from bnstudy.config.schema import resolve_device
from bnstudy.errors import USER_ERRORS, as_out_of_memory, first_line, one_line
from bnstudy.records import FINISHED, EpochMetrics, RecordsError, RunFolder, Summary
from bnstudy.study.norms import count_norm_parameters, group_counts
from bnstudy.sweeps.gpus import claim_gpu
from bnstudy.sweeps.report import progress, record_start
from bnstudy.sweeps.stopping import Stop, owner_pid, stops_within_seconds
from bnstudy.training import kernels
from bnstudy.training.loop import Diverged, fit
from bnstudy.training.observers import Observers
from bnstudy.training.parts import build_parts, checkpoint_state, fold, restore

log = logging.getLogger("bnstudy")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


@dataclass(frozen=True)
class Outcome:
    status: str
    skipped: bool = False  # nothing was trained: finished before, or held by another process
    error: str = ""


@contextmanager
def _training_device(name: str) -> Iterator[torch.device]:
    """The device to train on; on a machine with several GPUs, one no other run holds."""
    device = resolve_device(name)
    if device.type != "cuda" or torch.cuda.device_count() < 2:
        yield device
        return
    with claim_gpu(torch.cuda.device_count()) as index:
        torch.cuda.set_device(index)
        yield torch.device("cuda", index)


def execute(cfg: DictConfig, run_dir: Path, sweep_job: int | None = None) -> Outcome:
    """Train and evaluate one config, recording into `run_dir`; `sweep_job` is its index in
    a sweep (Hydra's job number), for the progress in its log lines."""
    config = preflight.check(cfg)  # done before the folder was made; again for a sweep's cell
    ident = records.identity(config)
    record_start(ident, run_dir)
    folder = RunFolder(run_dir)
    folder.check_owner(ident["run_id"])
    with folder.lock() as locked:
        if not locked:
            return Outcome(
                "running", skipped=True, error=f"{run_dir} is being trained by another process"
            )
        previous = folder.read_summary()
        if previous is not None and previous["status"] in FINISHED:
            log.info("already %s: %s (nothing to do)", previous["status"], run_dir)
            folder.drop_checkpoint()  # left by a kill after the summary said finished
            return Outcome(previous["status"], skipped=True, error=previous["error"])
        with (
            _training_device(cfg.device.name) as device,
            stops_within_seconds(owner_pid()) as stop,
        ):
            return _train(cfg, ident, folder, previous, device, stop, sweep_job)


@contextmanager
def _out_of_memory_named(cfg: DictConfig) -> Iterator[None]:
    """An allocator's out-of-memory error as one line naming the size asked for and the run's
    model, width and batch size (errors.OutOfMemory); every other error as it is."""
    try:
        yield
    except RuntimeError as e:
        size = f"{cfg.model.name} at model.width={cfg.model.width}, batch_size={cfg.batch_size}"
        oom = as_out_of_memory(e, size)
        if oom is None:
            raise
        raise oom from None


def _train(
    cfg: DictConfig,
    ident: dict[str, Any],
    folder: RunFolder,
    previous: dict[str, str] | None,
    device: torch.device,
    stop: Stop,
    sweep_job: int | None,
) -> Outcome:
    # Until the checkpoint says which epochs stand, the epochs on disk are the run's progress.
    epochs = folder.read_metrics()
    cpu = kernels.current()
    summary = Summary(
        status="running",
        device=_device_label(device),
        cpu=cpu.cpu,
        cpu_isa=cpu.isa,
        torch_version=torch.__version__,
        torchvision_version=torchvision.__version__,
        hydra_version=hydra.__version__,
        python_version=platform.python_version(),
        started_at=previous["started_at"] if previous else _now(),
    )
    # Wall time adds up over resumed sessions.
    earlier_seconds = float(previous["wall_seconds"] or 0) if previous else 0.0
    started = time.perf_counter()

    def record(status: str, **extra: Any) -> None:
        nonlocal summary
        summary = replace(
            summary,
            status=status,
            **records.progress(epochs),
            wall_seconds=round(earlier_seconds + time.perf_counter() - started, 3),
            updated_at=_now(),
            **extra,
        )
        folder.write_summary(ident, summary)

    record("running")  # from here on, every way out of this run leaves a status
    # Stopped while stuck in native code, the process ends from a watchdog thread.
    stop.on_stuck = lambda: _record_stuck(record, stop)
    try:
        with _out_of_memory_named(cfg):
            parts = build_parts(cfg, device)
        summary = replace(
            summary,
            n_params=sum(p.numel() for p in parts.model.parameters()),
            n_norm_params=count_norm_parameters(parts.model),
            norm_groups=group_counts(parts.model),
        )
        start_epoch = 1
        checkpoint = folder.load_checkpoint()
        if checkpoint is not None:
            if _folded_by(checkpoint.get("epoch"), cfg.norm.freeze_after):
                # The checkpoint holds the folded model: its statistics are restored, not measured.
                fold(parts, cfg.norm, cfg.optim.norm_weight_decay, measure=False)
            start_epoch = restore(parts, checkpoint, cfg.trainer.epochs, folder.checkpoint_path)
            log.info("resuming %s from epoch %d", folder.path, start_epoch)
        # Epochs written after the checkpoint will be trained again.
        epochs = [m for m in epochs if m.epoch < start_epoch]
        with _out_of_memory_named(cfg):
            observers = Observers(cfg, parts, folder, ident, start_epoch)

        session_epochs: list[float] = []

        def on_epoch_end(m: EpochMetrics) -> None:
            epochs.append(m)
            # Records before checkpoint: a crash in between only repeats this epoch on resume.
            folder.write_metrics(ident, epochs)
            observers.epoch_end(m)  # γ and β as the epoch left them, before any fold
            if m.epoch == cfg.norm.freeze_after:
                fold(parts, cfg.norm, cfg.optim.norm_weight_decay)
                log.info(
                    "epoch %d: normalization folded (into %s, %s statistics, optimizer state %s)",
                    m.epoch,
                    cfg.norm.fold_into,
                    cfg.norm.fold_stats,
                    cfg.norm.fold_momentum,
                )
            folder.save_checkpoint(checkpoint_state(parts, m.epoch))
            record("running")
            session_epochs.append(m.epoch_seconds)
            _log_epoch(m, cfg.trainer.epochs, session_epochs, sweep_job)

        log.info(
            "run %s on %s (%s): %s params (%s in norm layers) -> %s",
            ident["run_id"],
            summary.device,
            ident["trainer.precision"],
            f"{summary.n_params:,}",
            f"{summary.n_norm_params:,}",
            folder.path,
        )
        with _out_of_memory_named(cfg), closing(observers):
            fit(
                parts.train_model,
                parts.train_loader,
                parts.val_loader,
                parts.test_loader,
                parts.optimizer,
                parts.schedule,
                cfg.trainer.epochs,
                start_epoch=start_epoch,
                on_epoch_end=on_epoch_end,
                log_every=cfg.trainer.log_every,
                progress=cfg.trainer.progress,
                autocast_dtype=parts.fast.autocast_dtype,
                scaler=parts.scaler,
                clip_grad_norm=cfg.optim.clip_grad_norm,
            )
        # In this order: a kill between any two steps never trains a finished run again.
        folder.save_model(parts.model.state_dict())
        record("completed")
    except Diverged as e:
        log.warning("diverged: %s; recorded as a result in %s", e, folder.path)
        record("diverged", diverged_epoch=e.epoch, diverged_reason=e.reason, error=str(e))
        folder.drop_checkpoint()
        return Outcome("diverged", error=str(e))
    except BaseException as e:
        if stop.asked_for(e):  # Ctrl-C, SIGTERM, a SLURM requeue: not a failure of the run
            _record_end(record, *stop.outcome(e))
        else:
            error = one_line(e) if isinstance(e, USER_ERRORS) else first_line(e)
            _record_end(record, "failed", error)
        raise
    try:  # the run is complete whatever happens here; a rerun removes a leftover checkpoint
        folder.drop_checkpoint()
    except OSError as e:
        log.warning("could not remove %s: %s", folder.checkpoint_path, e)
    best = (
        f", {summary.test_acc_at_best_val:.2f}% at the best validation epoch "
        f"({summary.best_val_epoch})"
        if summary.best_val_epoch is not None
        else ""
    )
    log.info("completed: final test acc %.2f%%%s -> %s", summary.final_test_acc, best, folder.path)
    return Outcome("completed")


def _folded_by(epoch: object, freeze_after: int | None) -> bool:
    return freeze_after is not None and isinstance(epoch, int) and epoch >= freeze_after


def _record_end(record: Any, status: str, error: str) -> None:
    """Record how the run ended, if the disk still lets us; the error itself is raised after."""
    try:
        record(status, error=error)
    except RecordsError as e:
        log.error("could not record status %s: %s", status, e)


def _record_stuck(record: Any, stop: Stop) -> None:
    status, reason = stop.outcome()
    _record_end(record, status, f"{reason} (stopped while stuck in a native kernel)")


def _log_epoch(
    m: EpochMetrics, epochs: int, epoch_seconds: list[float], sweep_job: int | None
) -> None:
    """One line per epoch, in run.log and on the terminal; in a sweep, where the sweep stands."""
    val = f"  val acc {m.val_acc:.2f}%" if m.val_acc is not None else ""
    line = (
        f"epoch {m.epoch}/{epochs}  train loss {m.train_loss:.4f} acc {m.train_acc:.2f}%{val}  "
        f"test loss {m.test_loss:.4f} acc {m.test_acc:.2f}%  lr {m.epoch_lr:.4g}  "
        f"{m.epoch_seconds:.1f} s  {m.train_images_per_s:.0f} img/s"
    )
    # This session's epochs: a resumed run's earlier ones ran at another time, maybe elsewhere.
    left = (epochs - m.epoch) * sum(epoch_seconds) / len(epoch_seconds)
    where = progress(sweep_job, left, m.epoch / epochs) if sweep_job is not None else ""
    log.info("%s%s", line, f"  | {where}" if where else "")
