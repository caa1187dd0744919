"""The train/eval entrypoint: `python -m bnstudy.run norm=affine model=resnet50`.

Thin on purpose: config -> parts (data, model, optimizer) -> `fit` -> records in the run folder.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

import hydra
import torch
import torchvision
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from bnstudy import records
from bnstudy.accel import (
    FastPathError,
    FastPaths,
    apply_global_flags,
    make_scaler,
    prepare_model,
    resolve_fast_paths,
)
from bnstudy.config import ConfigError, resolve_device, validate
from bnstudy.data import DATASETS, DatasetError, GpuLoader, load_dataset
from bnstudy.gpus import claim_gpu
from bnstudy.models import build_resnet
from bnstudy.norms import count_norm_parameters, make_norm
from bnstudy.records import FINISHED, EpochMetrics, RecordsError, RunFolder
from bnstudy.sweep import record_job
from bnstudy.train import Diverged, fit, make_optimizer, make_schedule

log = logging.getLogger("bnstudy")

# Absolute, so Hydra finds it whichever way this module was loaded (see the end of the file).
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

# Errors that mean "the user asked for something that cannot work": one line, exit 2.
OUR_ERRORS = (ConfigError, DatasetError, RecordsError)
USER_ERRORS = (HydraException, OmegaConfBaseException, *OUR_ERRORS)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


@dataclass(frozen=True)
class Outcome:
    status: str
    skipped: bool = False  # finished before this invocation: nothing was trained
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


def execute(cfg: DictConfig, run_dir: Path) -> Outcome:
    """Train and evaluate one config, recording into `run_dir`."""
    config = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(config, dict)
    run_id = records.run_id(config)
    folder = RunFolder(run_dir)
    folder.check_owner(run_id)
    with folder.lock() as locked:
        if not locked:
            log.warning("%s is being run by another process; leaving it alone", run_dir)
            return Outcome("running", skipped=True)
        previous = folder.read_summary()
        if previous is not None and previous["status"] in FINISHED:
            log.info("already %s: %s (nothing to do)", previous["status"], run_dir)
            return Outcome(previous["status"], skipped=True, error=previous["error"])
        with _training_device(cfg.device.name) as device:
            return _train(cfg, config, run_id, folder, previous, device)


@dataclass
class Parts:
    """Everything one training needs, built from the config for one device."""

    model: nn.Module  # what checkpoints save
    train_model: nn.Module  # the same weights, maybe compiled: what steps run
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    train_loader: GpuLoader
    test_loader: GpuLoader
    generator: torch.Generator  # shuffling and augmentation
    fast: FastPaths


def build_model(cfg: DictConfig, model_name: str | None = None) -> nn.Module:
    """The configured ResNet (or `model_name` at the same width) with the configured norm."""
    spec = DATASETS[cfg.dataset.name]
    norm = make_norm(cfg.norm.name, cfg.norm.eps, cfg.norm.momentum)
    name = model_name or cfg.model.name
    return build_resnet(name, norm, spec.channels, spec.classes, cfg.model.width)


def build_optimizer(cfg: DictConfig, model: nn.Module) -> torch.optim.Optimizer:
    hyper = {k: v for k, v in cfg.optim.items() if k != "schedule"}
    return make_optimizer(model.parameters(), **hyper)


def build_parts(cfg: DictConfig, device: torch.device) -> Parts:
    """Data, model, optimizer and fast paths for `cfg` on `device`, seeded by cfg.seed."""
    try:
        fast = resolve_fast_paths(
            device,
            cfg.trainer.precision,
            cfg.trainer.channels_last,
            cfg.trainer.compile,
            cfg.trainer.cudnn_benchmark,
        )
    except FastPathError as e:
        raise ConfigError(str(e)) from None
    apply_global_flags(fast, device)
    spec = DATASETS[cfg.dataset.name]
    train_split, test_split = load_dataset(
        cfg.dataset.name,
        cfg.dataset.root,
        cfg.dataset.download,
        cfg.data.train_subset,
        cfg.data.test_subset,
    )
    if len(train_split.labels) < cfg.batch_size:
        raise ConfigError(
            f"batch_size={cfg.batch_size} exceeds the {len(train_split.labels)} training images; "
            "lower batch_size or raise data.train_subset"
        )
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    train_model = prepare_model(model, fast)
    optimizer = build_optimizer(cfg, model)
    schedule = make_schedule(optimizer, cfg.optim.schedule, cfg.trainer.epochs)
    loader_args = {"device": device, "memory_format": fast.memory_format}
    train_loader = GpuLoader(
        train_split,
        spec,
        cfg.batch_size,
        train=True,
        augment=cfg.data.augment,
        generator=generator,
        **loader_args,
    )
    test_loader = GpuLoader(test_split, spec, cfg.data.eval_batch_size, train=False, **loader_args)
    return Parts(
        model,
        train_model,
        optimizer,
        schedule,
        make_scaler(fast, device),
        train_loader,
        test_loader,
        generator,
        fast,
    )


def _checkpoint(parts: Parts, epoch: int, device: torch.device) -> dict[str, Any]:
    """Everything needed to continue after `epoch` exactly as if never stopped."""
    rng = {"torch": torch.get_rng_state(), "data": parts.generator.get_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    state = {
        "epoch": epoch,
        "model": parts.model.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "schedule": parts.schedule.state_dict(),
        "rng": rng,
    }
    if parts.scaler is not None:
        state["scaler"] = parts.scaler.state_dict()
    return state


def _restore(parts: Parts, state: dict[str, Any], device: torch.device) -> int:
    """Load a checkpoint into `parts`; returns the epoch to start from."""
    parts.model.load_state_dict(state["model"])
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.schedule.load_state_dict(state["schedule"])
    torch.set_rng_state(state["rng"]["torch"])
    parts.generator.set_state(state["rng"]["data"])
    if device.type == "cuda" and "cuda" in state["rng"]:
        torch.cuda.set_rng_state(state["rng"]["cuda"], device)
    if parts.scaler is not None and "scaler" in state:
        parts.scaler.load_state_dict(state["scaler"])
    return state["epoch"] + 1


def _train(
    cfg: DictConfig,
    config: dict[str, Any],
    run_id: str,
    folder: RunFolder,
    previous: dict[str, str] | None,
    device: torch.device,
) -> Outcome:
    parts = build_parts(cfg, device)
    rows: list[dict[str, Any]] = []
    start_epoch = 1
    checkpoint = folder.load_checkpoint()
    if checkpoint is not None:
        start_epoch = _restore(parts, checkpoint, device)
        # Rows written after the checkpoint belong to an epoch that will be trained again.
        rows = [r for r in folder.read_metrics() if int(r["epoch"]) < start_epoch]
        log.info("resuming %s from epoch %d", folder.path, start_epoch)

    ident = {"run_id": run_id, **records.identity(config)}
    summary: dict[str, Any] = {
        **ident,
        "status": "running",
        "n_params": sum(p.numel() for p in parts.model.parameters()),
        "n_norm_params": count_norm_parameters(parts.model),
        "device": _device_label(device),
        "precision": parts.fast.precision,
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "hydra_version": hydra.__version__,
        "python_version": platform.python_version(),
        "started_at": previous["started_at"] if previous else _now(),
    }
    # Wall time adds up over resumed sessions.
    earlier_seconds = float(previous["wall_seconds"] or 0) if previous else 0.0
    started = time.perf_counter()

    def record(status: str, **extra: Any) -> None:
        summary.update(
            status=status,
            **records.progress(rows),
            wall_seconds=round(earlier_seconds + time.perf_counter() - started, 3),
            updated_at=_now(),
            **extra,
        )
        folder.write_summary(summary)

    def on_epoch_end(m: EpochMetrics) -> None:
        rows.append({**ident, **{c: getattr(m, c) for c in records.EPOCH_COLUMNS}})
        # Metrics before checkpoint: a crash in between only repeats this epoch on resume.
        folder.write_metrics(rows)
        folder.save_checkpoint(_checkpoint(parts, m.epoch, device))
        record("running")
        log.info(
            "epoch %d/%d  train loss %.4f acc %.2f%%  test loss %.4f acc %.2f%%  lr %.4g  "
            "%.1f s  %.0f img/s",
            m.epoch,
            cfg.trainer.epochs,
            m.train_loss,
            m.train_acc,
            m.test_loss,
            m.test_acc,
            m.epoch_lr,
            m.epoch_seconds,
            m.train_images_per_s,
        )

    log.info(
        "run %s on %s: %s params (%s in norm layers) -> %s",
        run_id,
        summary["device"],
        f"{summary['n_params']:,}",
        f"{summary['n_norm_params']:,}",
        folder.path,
    )
    record("running")
    try:
        fit(
            parts.train_model,
            parts.train_loader,
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
        )
    except Diverged as e:
        log.warning("diverged: %s; recorded as a result in %s", e, folder.path)
        record("diverged", diverged_epoch=e.epoch, error=str(e))
        folder.checkpoint_path.unlink(missing_ok=True)
        return Outcome("diverged", error=str(e))
    except BaseException as e:
        record("failed", error=_first_line(e))
        raise
    folder.save_model(parts.model.state_dict())
    record("completed")
    log.info(
        "completed: final test acc %.2f%%, best %.2f%% (epoch %s) -> %s",
        summary["final_test_acc"],
        summary["best_test_acc"],
        summary["best_epoch"],
        folder.path,
    )
    return Outcome("completed")


def _first_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".splitlines()[0]


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> str:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    # In a sweep one run's failure must not stop the others: it is recorded (summary.csv,
    # run.log, the sweep's ledger) and reported when the sweep ends.
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        validate(cfg)  # again, for a hydra.run.dir that does not use bnstudy_run_path
        outcome = execute(cfg, run_dir)
    except USER_ERRORS as e:
        # Missing or bad dataset files would fail every run of a sweep alike: stop at once.
        if not in_sweep or isinstance(e, DatasetError):
            # Exit here: an exception would make Hydra print the job's overrides first.
            _exit_with(e)
        log.error("run failed: %s", one_line(e))
        outcome = Outcome("failed", error=one_line(e))
    except Exception as e:
        if not in_sweep:
            raise
        log.exception("run failed: %s", run_dir)
        outcome = Outcome("failed", error=_first_line(e))
    record_job(outcome.status, run_dir, outcome.error, outcome.skipped)
    return outcome.status


def one_line(error: BaseException) -> str:
    """A user error as one line: ours as they are; Hydra's and OmegaConf's first lines and key."""
    cause: BaseException | None = error
    while cause is not None:  # our errors raised inside a resolver arrive wrapped by OmegaConf
        if isinstance(cause, OUR_ERRORS):
            return str(cause)
        cause = cause.__cause__ or cause.__context__
    parts = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = parts[0] if parts else type(error).__name__
    detail = error.__cause__ if isinstance(error.__cause__, OmegaConfBaseException) else error
    if isinstance(detail, OmegaConfBaseException):
        first = str(detail).splitlines()[0].strip()
        key = getattr(detail, "full_key", None)
        if first and first not in text:
            text = f"{text} {first}"
        if key and key not in text:
            text = f"{text} (key: {key})"
    # Hydra lists the group's schemas (optim/sgd_schema) too; they are not choices.
    options = [o for o in getattr(error, "options", None) or [] if not o.endswith("_schema")]
    if options:
        text = f"{text}; choose one of: {', '.join(sorted(options))}"
    return text


def cli() -> None:
    # Hydra prints composition errors over several lines and task errors with a traceback;
    # letting them through (HYDRA_FULL_ERROR) lets us print a user's mistake as one line.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    try:
        main()
    except USER_ERRORS as e:
        _exit_with(e)


def _exit_with(error: BaseException) -> NoReturn:
    print(f"bnstudy: error: {one_line(error)}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    # Call the imported module's copy: launchers (joblib, submitit) then pickle the task
    # function by reference (bnstudy.run.main) rather than by value with all of __main__.
    from bnstudy.run import cli as imported_cli

    imported_cli()
