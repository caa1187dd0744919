"""The optimizers and learning-rate schedules: one table of each, which the config schema
(bnstudy/config/schema.py), the builders (bnstudy/training/parts.py) and the docs all read.
Adding one is an entry here plus its YAML in conf/optim/ (see CONTRIBUTING.md)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from omegaconf import II

if TYPE_CHECKING:  # torch is imported where it is used: the schemas serve the config checks
    import torch

    Schedule = torch.optim.lr_scheduler.LRScheduler


LR_SCALINGS = ("none", "linear", "sqrt")  # optim.lr_scaling


@dataclass
class _Common:
    """What every optimizer config has besides its own hyper-parameters."""

    # Weight decay on γ and β of the norm layers; by default the same as on the weights.
    norm_weight_decay: float = II(".weight_decay")
    schedule: str = "cosine"
    # Linear warm-up over the first epochs from lr/warmup_factor to lr, then the schedule.
    warmup_epochs: int = 0
    warmup_factor: float = 10.0
    # Clip the gradients' total norm to this (unset: no clipping).
    clip_grad_norm: float | None = None
    # The lr used is optim.lr × (batch_size / base_batch_size) for linear (Goyal et al. 2017),
    # × its square root for sqrt, × 1 for none.
    lr_scaling: str = "none"
    base_batch_size: int = 128


@dataclass
class SGDConfig(_Common):
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False


@dataclass
class AdamConfig(_Common):
    name: str = "adam"
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0


def effective_lr(cfg: Any, batch_size: int) -> float:
    """optim.lr scaled by optim.lr_scaling for this batch size."""
    ratio = batch_size / cfg.base_batch_size
    return cfg.lr * {"none": 1.0, "linear": ratio, "sqrt": ratio**0.5}[cfg.lr_scaling]


def _sgd(groups: list[dict], cfg: Any, lr: float) -> torch.optim.Optimizer:
    import torch

    return torch.optim.SGD(
        groups,
        lr=lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
    )


def _adam(groups: list[dict], cfg: Any, lr: float) -> torch.optim.Optimizer:
    import torch

    return torch.optim.Adam(
        groups, lr=lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay
    )


@dataclass(frozen=True)
class OptimizerKind:
    schema: type  # the `optim` group's schema for this choice (conf/optim/<name>.yaml)
    # (parameter groups, the optim config, lr) -> optimizer; a group's weight_decay wins.
    build: Callable[[list[dict], Any, float], torch.optim.Optimizer]
    state_slots: int  # fp32 tensors of optimizer state per parameter (the memory check)


# The optim group's choices.
OPTIMIZERS: dict[str, OptimizerKind] = {
    "sgd": OptimizerKind(SGDConfig, _sgd, state_slots=1),  # momentum
    "adam": OptimizerKind(AdamConfig, _adam, state_slots=2),  # first and second moments
}


def make_schedule(optimizer: torch.optim.Optimizer, cfg: Any, epochs: int) -> Schedule:
    """optim.schedule over the epochs after the warm-up, preceded by a linear warm-up from
    lr/warmup_factor to lr over optim.warmup_epochs; stepped once per epoch."""
    import torch

    warmup = cfg.warmup_epochs
    if warmup == 0:
        return SCHEDULES[cfg.schedule](optimizer, epochs)
    ramp = torch.optim.lr_scheduler.LinearLR(
        optimizer, start_factor=1 / cfg.warmup_factor, total_iters=warmup
    )
    rest = SCHEDULES[cfg.schedule](optimizer, epochs - warmup)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, rest], milestones=[warmup])


def _cosine(optimizer: torch.optim.Optimizer, epochs: int) -> Schedule:
    # From lr to 0 over the run: no milestones to tune per epoch count.
    from torch.optim.lr_scheduler import CosineAnnealingLR

    return CosineAnnealingLR(optimizer, T_max=epochs)


def _constant(optimizer: torch.optim.Optimizer, epochs: int) -> Schedule:
    from torch.optim.lr_scheduler import ConstantLR

    return ConstantLR(optimizer, factor=1.0, total_iters=0)


# optim.schedule's choices: (optimizer, epochs) -> a schedule stepped once per epoch.
SCHEDULES: dict[str, Callable[[torch.optim.Optimizer, int], Schedule]] = {
    "cosine": _cosine,
    "constant": _constant,
}
