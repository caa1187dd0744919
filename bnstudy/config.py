"""The config schema (Hydra structured configs) and the checks OmegaConf cannot express.

OmegaConf refuses unknown keys and wrong types while Hydra composes the config; `validate`
refuses impossible values (a batch size of 0, an unknown model, a NaN learning rate) before
anything is built. bnstudy/preflight.py runs it, with the checks that read files, before a run
folder exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from bnstudy.accel import COMPILE_MODES, PRECISIONS, FastPathError, fast_paths
from bnstudy.controls import CHOICES, DEFAULTS, FOLD_KEYS
from bnstudy.errors import ConfigError  # noqa: F401  (re-exported: raised by validate)
from bnstudy.kernels import KERNELS
from bnstudy.optim import LR_SCALINGS, OPTIMIZERS, SCHEDULES

if TYPE_CHECKING:  # imported where used: the value checks answer without torch
    import torch

DEVICES = ("auto", "cpu", "cuda", "mps")
MAX_SEED = 2**63 - 1  # torch's generators take a signed 64-bit seed


@dataclass
class ModelConfig:
    name: str = MISSING
    # Channels of the first stage; 64 is the standard ResNet, 8-16 make CPU runs fast.
    width: int = 64
    # kaiming (He et al., fan-out) or lsuv: kaiming, then each conv rescaled in network order
    # to unit output variance on the init batch (Mishkin & Matas 2016).
    init: str = DEFAULTS["model.init"]
    # The residual branches start at zero: γ of each block's last norm is 0, or, where that
    # norm has no γ, a learnable scalar gate at 0 ends the branch (SkipInit, De & Smith 2020).
    zero_init_residual: bool = DEFAULTS["model.zero_init_residual"]


@dataclass
class NormConfig:
    name: str = MISSING
    eps: float = 1e-5
    # Weight of the newest batch in the running mean/var (PyTorch's convention).
    momentum: float = 0.1
    # Which of γ and β the layers learn: both, scale (γ only) or shift (β only).
    params: str = DEFAULTS["norm.params"]
    # groupnorm's groups at model.width=64, scaled with the width (4 at width 8); fewer where
    # a layer's channels are not divisible, and never under 2 channels per group.
    groups: int = 32
    # affine's starting point: ones (γ=1, β=0) or data (BatchNorm's first-step statistics).
    init: str = DEFAULTS["norm.init"]
    # Training images in the fixed, seeded batch that norm.init=data and model.init=lsuv use.
    init_batch: int = 512
    # batchnorm/bnminus: fold after this epoch and train on unnormalized (bnstudy/init.py).
    freeze_after: int | None = None
    # What the fold leaves: frozen_norm (γ, β kept, on fixed statistics) or affine (γ', β').
    fold_into: str = DEFAULTS["norm.fold_into"]
    # The statistics folded in: population (one pass over the training images) or running.
    fold_stats: str = DEFAULTS["norm.fold_stats"]
    # γ/β optimizer state at the fold: map (through the fold's linear map) or reset.
    fold_momentum: str = DEFAULTS["norm.fold_momentum"]


@dataclass
class DatasetConfig:
    name: str = MISSING
    # Folder that holds the dataset's files (or receives them when download=true).
    root: str = MISSING
    download: bool = False


@dataclass
class DataConfig:
    train_subset: int | None = None
    test_subset: int | None = None
    # Images held out of the training set (after train_subset) to choose epochs and learning
    # rates on, never on the test set; 0 trains on all of them (the paper's protocol).
    val_size: int = 5000
    # Seeds the validation split alone: the same images for every run and seed of a study.
    split_seed: int = 0
    augment: bool = True
    # Evaluation uses running statistics, so its batch size does not change the results.
    eval_batch_size: int = 1000


@dataclass
class TrainerConfig:
    epochs: int = 100
    # tqdm bar per epoch; it stays quiet anyway when output is not a terminal.
    progress: bool = True
    # Steps between looks at the running loss (bar update and non-finite check).
    log_every: int = 50
    # Fast paths (bnstudy/accel.py). auto/null: bf16 + channels_last on CUDA; on the CPU fp32 +
    # NCHW, a choice that does not depend on the processor.
    precision: str = "auto"  # auto, fp32, bf16, fp16
    channels_last: bool | None = None
    compile: str = "none"  # none, default, reduce-overhead (CUDA graphs), max-autotune
    cudnn_benchmark: bool = True
    # CPU runs: the AVX2 kernels of oneDNN, ATen and MKL on every x86-64 machine (portable:
    # the same bits everywhere) or the machine's own fastest (native); see bnstudy/kernels.py.
    cpu_kernels: str = "portable"
    # Intra-op threads of a CPU run: fixed, because the threads split (and order) the sums.
    cpu_threads: int = 2
    # CUDA: deterministic cuDNN kernels and no cudnn.benchmark, so that the same config on the
    # same GPU repeats bit for bit (a resumed run included), at some speed. The CPU's kernels
    # already repeat on the same processor and thread count.
    deterministic: bool = False
    # all, or norm: only γ, β and the classifier learn; every conv stays at its random init.
    train_only: str = DEFAULTS["trainer.train_only"]
    # layers.csv: γ, β, activations on a fixed probe batch and gradient norms per layer, at
    # init and after every epoch (bnstudy/diagnostics.py); they change no result.
    diagnostics: bool = True
    # TensorBoard scalars of every epoch's metrics in <run folder>/tensorboard (the CSVs stay
    # the record).
    tensorboard: bool = False


@dataclass
class DeviceConfig:
    name: str = MISSING


@dataclass
class PathsConfig:
    output_root: str = "outputs"


def _tuning() -> dict[str, Any]:
    # `from` is a Python keyword, so this node is a plain dict: {"from": DIR or None}, the
    # folder of an lr search that tuning=tuned (experiment=paper_tuned) reads its learning
    # rates from; `search`: true in an lr search (tuning=search), which needs a validation split.
    return {"from": None, "search": False}


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    norm: NormConfig = field(default_factory=NormConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: Any = MISSING  # SGDConfig or AdamConfig, chosen by the optim group
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    tuning: Any = field(default_factory=_tuning)
    batch_size: int = 128
    seed: int = 0


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
    from bnstudy.data import DATASETS
    from bnstudy.models import RESNETS
    from bnstudy.norms import NORMS

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
    """The controls of bnstudy/controls.py: where each applies, and which go together."""
    from bnstudy.norms import NORMS

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
    from bnstudy.norms import trains_unnormalized

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


def resolve_device(name: str) -> torch.device:
    """Map the `device` choice to a torch device; refuses a backend this machine lacks."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but PyTorch sees no CUDA GPU here; use device=auto or cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device=mps but Apple MPS is not available here; use device=auto or cpu")
    return torch.device(name)


SCHEMA_SUFFIX = "_schema"  # conf/optim/<name>.yaml builds on the ConfigStore's <name>_schema
# Absolute, so Hydra finds it whichever way bnstudy.run was loaded.
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def config_groups() -> dict[str, list[str]]:
    """Each config group and its choices: the YAML files in conf/<group>/ (schemas aside)."""
    return {
        group.name: sorted(p.stem for p in group.glob("*.yaml"))
        for group in sorted(CONF_DIR.iterdir())
        if group.is_dir() and group.name != "hydra"
    }


def _groups_help() -> str:
    """`${bnstudy_groups:}` in the --help template: `group: choice, choice` lines."""
    return "\n".join(f"{group}: {', '.join(names)}" for group, names in config_groups().items())


def register_configs() -> None:
    """Put the schemas where conf/*.yaml refer to them (bnstudy's SLURM launcher's too), and
    the --help resolver."""
    from hydra_plugins.bnstudy_launcher.slurm_launcher import register

    register()
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    for name, kind in OPTIMIZERS.items():
        cs.store(group="optim", name=f"{name}{SCHEMA_SUFFIX}", node=kind.schema)
    OmegaConf.register_new_resolver("bnstudy_groups", _groups_help, replace=True)


# At import, not in run.py's main: launcher workers (submitit, joblib) unpickle the task and
# compose the config without running run.py as a script, but they import this module.
register_configs()
