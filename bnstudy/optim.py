"""The optimizers and learning-rate schedules: one table of each, which the config schema
(bnstudy/config.py), the builders (bnstudy/parts.py) and the docs all read. Adding one is an
entry here plus its YAML in conf/optim/ (see CONTRIBUTING.md)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import II

Schedule = torch.optim.lr_scheduler.LRScheduler


@dataclass
class SGDConfig:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # Weight decay on γ and β of the norm layers; by default the same as on the weights.
    norm_weight_decay: float = II(".weight_decay")
    nesterov: bool = False
    schedule: str = "cosine"


@dataclass
class AdamConfig:
    name: str = "adam"
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    norm_weight_decay: float = II(".weight_decay")
    schedule: str = "cosine"


def _sgd(groups: list[dict], cfg: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        groups,
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
    )


def _adam(groups: list[dict], cfg: Any) -> torch.optim.Optimizer:
    return torch.optim.Adam(
        groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay
    )


@dataclass(frozen=True)
class OptimizerKind:
    schema: type  # the `optim` group's schema for this choice (conf/optim/<name>.yaml)
    # (parameter groups, the optim config) -> optimizer; a group's own weight_decay wins.
    build: Callable[[list[dict], Any], torch.optim.Optimizer]


# The optim group's choices.
OPTIMIZERS: dict[str, OptimizerKind] = {
    "sgd": OptimizerKind(SGDConfig, _sgd),
    "adam": OptimizerKind(AdamConfig, _adam),
}

# optim.schedule's choices: (optimizer, epochs) -> a schedule stepped once per epoch.
SCHEDULES: dict[str, Callable[[torch.optim.Optimizer, int], Schedule]] = {
    # From lr to 0 over the run: no milestones to tune per epoch count.
    "cosine": lambda optimizer, epochs: torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=epochs
    ),
    "constant": lambda optimizer, epochs: torch.optim.lr_scheduler.ConstantLR(
        optimizer, factor=1.0, total_iters=0
    ),
}
