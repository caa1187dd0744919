"""Building what one training needs from a config (data, model, optimizer, fast paths), and the
state a checkpoint holds. Shared by the runner and the benchmark; knows nothing about files.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from bnstudy.data.datasets import DATASETS, Split, hold_out, load_dataset
from bnstudy.data.loader import GpuLoader
from bnstudy.records import RecordsError
from bnstudy.study.init import (
    carry_state,
    data_init_affine,
    fold_norms,
    freeze_convs,
    init_batch,
    lsuv,
    population_statistics,
    state_kept,
)
from bnstudy.study.models import build_resnet
from bnstudy.study.norms import make_norm, norm_parameters
from bnstudy.training.accel import (
    FastPaths,
    apply_global_flags,
    fast_paths,
    make_scaler,
    prepare_model,
)
from bnstudy.training.optim import OPTIMIZERS, effective_lr, make_schedule

CHECKPOINT_KEYS = ("epoch", "model", "optimizer", "schedule", "rng", "precision", "device_type")


@dataclass
class Parts:
    """Everything one training needs, built from the config for one device."""

    model: nn.Module  # what checkpoints save
    train_model: nn.Module  # the same weights, maybe compiled: what steps run
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    train_loader: GpuLoader
    val_loader: GpuLoader | None  # None when data.val_size is 0
    test_loader: GpuLoader
    generator: torch.Generator  # shuffling and augmentation
    fast: FastPaths
    device: torch.device


def build_model(cfg: DictConfig, model_name: str | None = None) -> nn.Module:
    """The configured ResNet (or `model_name` at the same width) with the configured norm."""
    spec = DATASETS[cfg.dataset.name]
    n = cfg.norm
    norm = make_norm(n.name, n.eps, n.momentum, n.params, n.groups, cfg.model.width)
    name = model_name or cfg.model.name
    return build_resnet(
        name, norm, spec.channels, spec.classes, cfg.model.width, cfg.model.zero_init_residual
    )


def start_model(cfg: DictConfig, model: nn.Module, train: Split, device: torch.device) -> None:
    """The data-dependent starting points (model.init=lsuv, then norm.init=data) on the fixed
    init batch, and trainer.train_only. Running statistics are left as they were."""
    if cfg.model.init == "lsuv" or cfg.norm.init == "data":
        spec = DATASETS[cfg.dataset.name]
        x, _ = init_batch(train, spec, cfg.norm.init_batch, cfg.seed, device)
        with state_kept(model):
            if cfg.model.init == "lsuv":
                lsuv(model, x)
            if cfg.norm.init == "data":
                data_init_affine(model, x, cfg.norm.eps)
    if cfg.trainer.train_only == "norm":
        freeze_convs(model)


def build_optimizer(cfg: DictConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The configured optimizer; γ and β of the norm layers form their own parameter group,
    decayed by optim.norm_weight_decay (every other parameter by optim.weight_decay)."""
    in_norms = {id(p) for p in norm_parameters(model)}
    learned = [p for p in model.parameters() if p.requires_grad]  # train_only=norm: no convs
    groups = [{"params": [p for p in learned if id(p) not in in_norms]}]
    if in_norms:
        norm_params = [p for p in learned if id(p) in in_norms]
        groups.append({"params": norm_params, "weight_decay": cfg.optim.norm_weight_decay})
    lr = effective_lr(cfg.optim, cfg.batch_size)
    return OPTIMIZERS[cfg.optim.name].build(groups, cfg.optim, lr)


def build_parts(cfg: DictConfig, device: torch.device) -> Parts:
    """Data, model, optimizer and fast paths for `cfg` on `device`, seeded by cfg.seed."""
    fast = fast_paths(cfg, device)
    apply_global_flags(fast, device)
    spec = DATASETS[cfg.dataset.name]
    train_split, test_split = load_dataset(
        cfg.dataset.name,
        cfg.dataset.root,
        cfg.dataset.download,
        cfg.data.train_subset,
        cfg.data.test_subset,
    )
    train_split, val_split = hold_out(train_split, cfg.data.val_size, cfg.data.split_seed)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    start_model(cfg, model, train_split, device)
    train_model = prepare_model(model, fast)
    optimizer = build_optimizer(cfg, model)
    schedule = make_schedule(optimizer, cfg.optim, cfg.trainer.epochs)
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
    val_loader = None
    if val_split is not None:
        val_loader = GpuLoader(
            val_split, spec, cfg.data.eval_batch_size, train=False, **loader_args
        )
    return Parts(
        model,
        train_model,
        optimizer,
        schedule,
        make_scaler(fast, device),
        train_loader,
        val_loader,
        test_loader,
        generator,
        fast,
        device,
    )


def checkpoint_state(parts: Parts, epoch: int) -> dict[str, Any]:
    """Everything needed to continue after `epoch` exactly as if never stopped."""
    rng = {"torch": torch.get_rng_state(), "data": parts.generator.get_state()}
    if parts.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(parts.device)
    state = {
        "epoch": epoch,
        "model": parts.model.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "schedule": parts.schedule.state_dict(),
        "rng": rng,
        # A resume must compute as the run began: the same precision on the same kind of device.
        "precision": parts.fast.precision,
        "device_type": parts.device.type,
    }
    if parts.scaler is not None:
        state["scaler"] = parts.scaler.state_dict()
    return state


def fold(parts: Parts, norm: Any, norm_weight_decay: float, measure: bool = True) -> None:
    """norm.freeze_after: fold the BatchNorm layers (init.fold_norms, as norm.fold_into asks)
    with the statistics norm.fold_stats names, and carry γ/β optimizer state through the fold
    (init.carry_state, as norm.fold_momentum asks). The optimizer and the schedule take on
    the γ and β that BN-minus gets when folded into AffineLayers. `measure=False` (a resume,
    whose checkpoint then restores what was folded) skips the pass over the training set."""
    stats = None
    if norm.fold_stats == "population" and measure:
        stats = population_statistics(
            parts.model, population_batches(parts), parts.fast.autocast_dtype
        )
    folds = fold_norms(parts.model, norm.fold_into, stats)
    carry_state(parts.optimizer, folds, norm.fold_into, norm.fold_momentum)
    new = [p for f in folds for p in f.new_parameters]
    if new:
        first = parts.optimizer.param_groups[0]
        lr, base_lr = first["lr"], first["initial_lr"]
        group = {"params": new, "weight_decay": norm_weight_decay, "lr": lr, "initial_lr": base_lr}
        parts.optimizer.add_param_group(group)
        # A warm-up chains two schedules (SequentialLR._schedulers); each keeps base_lrs.
        for schedule in getattr(parts.schedule, "_schedulers", [parts.schedule]):
            schedule.base_lrs.append(base_lr)


def population_batches(parts: Parts) -> Iterator[Tensor]:
    """The training images in order, unaugmented and normalized as the steps see them, in
    batches of the training batch size (the last partial one left out, as in training)."""
    loader = parts.train_loader
    plain = GpuLoader(
        Split(loader.images, loader.labels),
        loader.spec,
        loader.batch_size,
        parts.device,
        train=False,
        memory_format=parts.fast.memory_format,
    )
    for x, _ in itertools.islice(plain, len(loader.images) // loader.batch_size):
        yield x


def restore(parts: Parts, state: dict[str, Any], epochs: int, where: Path) -> int:
    """Load a checkpoint into `parts`; returns the epoch to start from. A checkpoint that does
    not belong to this run raises RecordsError naming `where` (the checkpoint file)."""
    fix = "delete it to restart the run"
    missing = [key for key in CHECKPOINT_KEYS if key not in state]
    if missing:
        raise RecordsError(f"{where}: not a bnstudy checkpoint (no {', '.join(missing)}); {fix}")
    for key, now in (("precision", parts.fast.precision), ("device_type", parts.device.type)):
        if state[key] != now:
            raise RecordsError(
                f"{where}: the run began with {key} {state[key]} and would resume with {now}; "
                f"resume it where it began, or {fix}"
            )
    epoch = state["epoch"]
    if not isinstance(epoch, int) or not 0 <= epoch <= epochs:
        raise RecordsError(f"{where}: epoch {epoch!r} is outside 0..{epochs}; {fix}")
    try:
        parts.model.load_state_dict(state["model"])
        parts.optimizer.load_state_dict(state["optimizer"])
        parts.schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["rng"]["torch"])
        parts.generator.set_state(state["rng"]["data"])
        if parts.device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], parts.device)
        if parts.scaler is not None and "scaler" in state:
            parts.scaler.load_state_dict(state["scaler"])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RecordsError(
            f"{where}: does not fit this run's model or optimizer ({first}); {fix}"
        ) from None
    return epoch + 1
