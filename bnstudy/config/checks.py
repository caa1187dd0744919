"""The checks OmegaConf cannot express: `validate` refuses impossible values (a batch size of 0,
an unknown model, a NaN learning rate, a control with a variant it does not apply to) before
anything is built, each in one line that names the key and the fix.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bnstudy.config.schema import DEVICES, Config, resolve_device
from bnstudy.errors import ConfigError
from bnstudy.study.controls import CHOICES, DEFAULTS, FOLD_KEYS
from bnstudy.training.accel import COMPILE_MODES, PRECISIONS, FastPathError, fast_paths
from bnstudy.training.kernels import KERNELS
from bnstudy.training.optim import LR_SCALINGS, OPTIMIZERS, SCHEDULES

MAX_SEED = 2**63 - 1  # torch's generators take a signed 64-bit seed


def _choice(key: str, value: str, allowed: Any) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not known; choose one of: {', '.join(allowed)}")


def _at_least(key: str, value: float | None, low: float) -> None:
    if value is not None and value < low:
        raise ConfigError(f"{key}={value} is impossible; it must be >= {low}")


@cache
def _schema(optim: str) -> DictConfig:
    """The whole schema with optim's own (read only; built once: a sweep checks every cell)."""
    optim_schema = OPTIMIZERS[optim].schema if optim in OPTIMIZERS else dict
    return OmegaConf.structured(Config(optim=optim_schema()))


def _check_keys(cfg: Any) -> None:
    """Refuse keys the schema lacks, including ones added with Hydra's `+key=value`."""
    schema = _schema(cfg.optim.name)

    def walk(node: DictConfig, known: DictConfig, prefix: str) -> None:
        for key in node:
            if key == "hydra" and not prefix:  # Hydra's own node, when composed with it
                continue
            if key not in known.keys():
                raise ConfigError(f"{prefix}{key} is not a bnstudy config key; remove it")
            child, known_child = node._get_node(key), known._get_node(key)
            if isinstance(child, DictConfig) and isinstance(known_child, DictConfig):
                walk(child, known_child, f"{prefix}{key}.")

    walk(cfg, schema, "")


def validate(cfg: Any) -> None:
    """Refuse values that compose fine but cannot run; raises ConfigError naming the key.
    The checks that need no torch come first: the usual mistakes are answered at once."""
    _check_keys(cfg)
    _check_values(cfg)
    _check_tables(cfg)
    _check_controls(cfg)
    device = resolve_device(cfg.device.name)
    try:
        fast_paths(cfg, device)
    except FastPathError as e:
        raise ConfigError(str(e)) from None


def _check_tables(cfg: Any) -> None:
    """The names the tables of models, norms and datasets know (importing them imports torch)."""
    from bnstudy.data.datasets import DATASETS
    from bnstudy.study.models import RESNETS
    from bnstudy.study.norms import NORMS

    _choice("model.name", cfg.model.name, RESNETS)
    _choice("norm.name", cfg.norm.name, NORMS)
    _choice("dataset.name", cfg.dataset.name, DATASETS)


def _check_values(cfg: Any) -> None:
    """Every value that can be checked without torch: choices, ranges, finite numbers."""
    _choice("optim.name", cfg.optim.name, OPTIMIZERS)
    _choice("optim.schedule", cfg.optim.schedule, SCHEDULES)
    _choice("device.name", cfg.device.name, DEVICES)
    _choice("trainer.precision", cfg.trainer.precision, PRECISIONS)
    _choice("trainer.compile", cfg.trainer.compile, COMPILE_MODES)
    _choice("trainer.cpu_kernels", cfg.trainer.cpu_kernels, KERNELS)
    for key, choices in CHOICES.items():
        group, leaf = key.split(".")
        _choice(key, cfg[group][leaf], choices)
    _at_least("norm.groups", cfg.norm.groups, 1)
    _at_least("norm.init_batch", cfg.norm.init_batch, 2)
    for key, value in [
        ("batch_size", cfg.batch_size),
        ("trainer.epochs", cfg.trainer.epochs),
        ("trainer.log_every", cfg.trainer.log_every),
        ("model.width", cfg.model.width),
        ("data.train_subset", cfg.data.train_subset),
        ("data.test_subset", cfg.data.test_subset),
        ("data.eval_batch_size", cfg.data.eval_batch_size),
        ("trainer.cpu_threads", cfg.trainer.cpu_threads),
    ]:
        _at_least(key, value, 1)
    _at_least("seed", cfg.seed, 0)
    if cfg.seed > MAX_SEED:
        raise ConfigError(f"seed={cfg.seed} is too large; it must be in 0..{MAX_SEED}")
    _positive("optim.lr", cfg.optim.lr)
    _positive("norm.eps", cfg.norm.eps)
    _within("norm.momentum", cfg.norm.momentum, 0, 1)
    _within("optim.weight_decay", cfg.optim.weight_decay, 0, math.inf)
    _within("optim.norm_weight_decay", cfg.optim.norm_weight_decay, 0, math.inf)
    _choice("optim.lr_scaling", cfg.optim.lr_scaling, LR_SCALINGS)
    _at_least("optim.base_batch_size", cfg.optim.base_batch_size, 1)
    _within("optim.warmup_factor", cfg.optim.warmup_factor, 1, math.inf)
    if not 0 <= cfg.optim.warmup_epochs < cfg.trainer.epochs:
        raise ConfigError(
            f"optim.warmup_epochs={cfg.optim.warmup_epochs} must be in 0..trainer.epochs-1 "
            f"(trainer.epochs={cfg.trainer.epochs})"
        )
    if cfg.optim.clip_grad_norm is not None:
        _positive("optim.clip_grad_norm", cfg.optim.clip_grad_norm)
    _at_least("data.val_size", cfg.data.val_size, 0)
    if cfg.tuning.search and cfg.data.val_size == 0:
        raise ConfigError(
            "tuning=search chooses each lr on the validation split, and data.val_size=0 holds "
            "none out (experiment=paper trains on every image); add data.val_size=5000, or run "
            "experiment=lr_search"
        )
    _at_least("data.split_seed", cfg.data.split_seed, 0)
    if cfg.optim.name == "sgd":
        _within("optim.momentum", cfg.optim.momentum, 0, math.inf)
        if cfg.optim.nesterov and cfg.optim.momentum == 0:
            raise ConfigError(
                "optim.nesterov=true needs optim.momentum > 0; set a momentum or nesterov=false"
            )
    if cfg.optim.name == "adam":
        for key in ("beta1", "beta2"):
            value = cfg.optim[key]
            if not (math.isfinite(value) and 0 <= value < 1):
                raise ConfigError(f"optim.{key}={value} is impossible; it must be in [0, 1)")


def _check_controls(cfg: Any) -> None:
    """The controls of bnstudy/study/controls.py: where each applies, and which go together."""
    from bnstudy.study.norms import NORMS

    norm, takes = cfg.norm.name, NORMS[cfg.norm.name].takes
    with_params = [n for n, v in NORMS.items() if "params" in v.takes]
    if cfg.norm.params != "both" and "params" not in takes:
        _not_with(f"norm.params={cfg.norm.params}", f"norm={norm}", f"norm={'|'.join(with_params)}")
    if cfg.trainer.train_only == "norm" and "params" not in takes:
        _not_with("trainer.train_only=norm", f"norm={norm}", f"norm={'|'.join(with_params)}")
    if cfg.norm.init == "data":
        if norm != "affine":
            _not_with("norm.init=data", f"norm={norm}", "norm=affine")
        if cfg.norm.params != "both":
            _not_with("norm.init=data", f"norm.params={cfg.norm.params}", "norm.params=both")
        if cfg.model.zero_init_residual:
            _not_with("norm.init=data", "model.zero_init_residual=true", "one of the two")
    k = cfg.norm.freeze_after
    if k is not None:
        if norm not in ("batchnorm", "bnminus"):
            _not_with(f"norm.freeze_after={k}", f"norm={norm}", "norm=batchnorm|bnminus")
        if not 1 <= k < cfg.trainer.epochs:
            raise ConfigError(
                f"norm.freeze_after={k} must be in 1..trainer.epochs-1 "
                f"(trainer.epochs={cfg.trainer.epochs}) to leave epochs after the fold"
            )
        if cfg.norm.params != "both":
            _not_with(f"norm.freeze_after={k}", f"norm.params={cfg.norm.params}", "both")
        if cfg.trainer.compile != "none":
            _not_with(f"norm.freeze_after={k}", f"trainer.compile={cfg.trainer.compile}", "none")
    for key in FOLD_KEYS:  # a fold key without a fold would change the identity, not a number
        value = cfg.norm[key.split(".")[1]]
        if k is None and value != DEFAULTS[key]:
            raise ConfigError(
                f"{key}={value} acts at the fold; set norm.freeze_after=K or leave {key} out"
            )
    _check_number_format(cfg)


def _check_number_format(cfg: Any) -> None:
    """fp16 only where every step normalizes: without normalization activations grow with
    depth (ResNet101 at width 64 reaches 1.4·10⁵ at init, fp16's largest is 65,504), and a
    run would diverge because of the number format, not the optimization."""
    from bnstudy.study.norms import trains_unnormalized

    if cfg.trainer.precision == "fp16" and trains_unnormalized(
        cfg.norm.name, cfg.norm.freeze_after
    ):
        what = f"norm={cfg.norm.name}"
        if cfg.norm.freeze_after is not None:
            what += f" norm.freeze_after={cfg.norm.freeze_after}"
        raise ConfigError(
            f"trainer.precision=fp16 does not go with {what}: without normalization the "
            "activations can exceed fp16's range (65,504) and the run would diverge because "
            "of the number format; use trainer.precision=bf16 or fp32"
        )


def _not_with(what: str, other: str, needs: str) -> None:
    raise ConfigError(f"{what} does not go with {other}; it needs {needs}")


def _positive(key: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{key}={value} is impossible; it must be a finite number > 0")


def _within(key: str, value: float, low: float, high: float) -> None:
    """`value` finite and in [low, high]."""
    if not (math.isfinite(value) and low <= value <= high):
        bound = f">= {low}" if high == math.inf else f"in [{low}, {high}]"
        raise ConfigError(f"{key}={value} is impossible; it must be a finite number {bound}")
