"""The config schema: Hydra structured configs for every group and key (OmegaConf refuses
unknown keys and wrong types while Hydra composes), the config groups under conf/, and the
device a run asks for. bnstudy/config/checks.py refuses impossible values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from bnstudy.errors import ConfigError
from bnstudy.study.controls import DEFAULTS
from bnstudy.training.optim import OPTIMIZERS

if TYPE_CHECKING:  # imported where used: the value checks answer without torch
    import torch


DEVICES = ("auto", "cpu", "cuda", "mps")


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
    # batchnorm/bnminus: fold after this epoch and train on unnormalized (bnstudy/study/init.py).
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
    # Fast paths (bnstudy/training/accel.py). auto/null: bf16 + channels_last on CUDA; on the
    # CPU fp32 + NCHW, a choice that does not depend on the processor.
    precision: str = "auto"  # auto, fp32, bf16, fp16
    channels_last: bool | None = None
    compile: str = "none"  # none, default, reduce-overhead (CUDA graphs), max-autotune
    cudnn_benchmark: bool = True
    # CPU runs: the AVX2 kernels of oneDNN, ATen and MKL on every x86-64 machine (portable:
    # the same bits everywhere) or the machine's own fastest (native); see
    # bnstudy/training/kernels.py.
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
    # init and after every epoch (bnstudy/training/diagnostics.py); they change no result.
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
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


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
