"""Everything refused before a run folder exists, so that a run that cannot work leaves nothing
behind: the config's values, the output root, the dataset files, the memory the weights need,
and a folder that already holds another config's run.

Hydra makes the run folder right after it resolves `hydra.run.dir` (`hydra.sweep.subdir` in a
sweep), which is `${bnstudy_run_path:}`: that resolver runs these checks first. A user who sets
hydra.run.dir by hand bypasses the resolver; `RunFolderGuard.on_run_start` covers that case.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra import compose, initialize_config_dir
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from bnstudy import records
from bnstudy.config.checks import validate
from bnstudy.config.schema import CONF_DIR, SCHEMA_SUFFIX, config_groups, resolve_device
from bnstudy.errors import ConfigError
from bnstudy.study.controls import variant_label
from bnstudy.training import kernels
from bnstudy.training.accel import resolve_precision
from bnstudy.training.optim import OPTIMIZERS

if TYPE_CHECKING:  # torch is imported where used: the config checks come first, without it
    import torch


def load_config(overrides: list[str]) -> DictConfig:
    """The config `python -m bnstudy.run OVERRIDES` would run (with Hydra's node), checked as
    a run is: for the commands beside run (bench, inspect)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    check(cfg)
    return cfg


def resolved(cfg: Any, device_type: str | None = None) -> dict[str, Any]:
    """The run's config as a plain dict, with `trainer.precision` resolved for this machine
    (or for a device of `device_type`): what identifies the run, so "auto" never reaches a
    record or a hash."""
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    config = OmegaConf.to_container(job, resolve=True)
    assert isinstance(config, dict)
    if device_type is None:
        device = resolve_device(cfg.device.name)
    else:  # the device a recorded run trained on, which this machine need not have
        import torch

        device = torch.device(device_type)
    config["trainer"]["precision"] = resolve_precision(device, cfg.trainer.precision)
    # The CPU's kernels and threads change a CPU run's numbers, and nothing of a GPU run's.
    on_cpu = device.type == "cpu"
    config["trainer"]["cpu_kernels"] = kernels.resolved(cfg.trainer.cpu_kernels) if on_cpu else None
    config["trainer"]["cpu_threads"] = cfg.trainer.cpu_threads if on_cpu else None
    return config


def check_output_root(root: str) -> Path:
    """Refuse an output root that is empty, a file, under a file, or not writable."""
    if not str(root).strip():
        raise ConfigError(
            "paths.output_root is empty; give the folder for run folders, e.g. "
            "paths.output_root=outputs"
        )
    path = Path(root).expanduser().absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == path else f"lies under the file {existing}"
        raise ConfigError(f"paths.output_root={root} {where}; choose a folder")
    if not os.access(existing, os.W_OK | os.X_OK):  # EROFS counts too, even for root
        raise ConfigError(
            f"paths.output_root={root}: {existing} is not writable (read-only file system or no "
            "permission); choose another folder"
        )
    return path


def check_memory(cfg: Any, device: torch.device) -> None:
    """Refuse a model whose weights, gradients and optimizer state exceed the free memory."""
    n_params = _parameter_count(
        json.dumps(OmegaConf.to_container(cfg.model, resolve=True), sort_keys=True),
        json.dumps(OmegaConf.to_container(cfg.norm, resolve=True), sort_keys=True),
        cfg.dataset.name,
    )
    # fp32 weights, their gradients and the optimizer's state, 4 bytes each.
    needed = n_params * 4 * (2 + OPTIMIZERS[cfg.optim.name].state_slots)
    free = _free_memory(device)
    if free is not None and needed > free:
        raise ConfigError(
            f"out of memory: {cfg.model.name} at model.width={cfg.model.width} has "
            f"{n_params:,} parameters, whose weights, gradients and optimizer state need "
            f"{needed / 2**30:,.1f} GiB; {device.type} has {free / 2**30:,.1f} GiB free; lower "
            "model.width"
        )


@lru_cache(maxsize=256)
def _parameter_count(model: str, norm: str, dataset: str) -> int:
    """Parameters of the model these (JSON) `model` and `norm` configs build for `dataset`,
    counted on the meta device without allocating them; once per architecture of a sweep."""
    cfg = OmegaConf.create({"model": json.loads(model), "norm": json.loads(norm)})
    cfg.dataset = {"name": dataset}
    import torch

    from bnstudy.training.parts import build_model

    with torch.device("meta"):
        return sum(p.numel() for p in build_model(cfg).parameters())


def _free_memory(device: torch.device) -> int | None:
    if device.type == "cuda":
        import torch

        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None  # MPS shares memory with the system and reports no free figure


def check(cfg: Any) -> dict[str, Any]:
    """Every check that needs no run folder; returns the resolved config (see `resolved`)."""
    validate(cfg)
    check_output_root(cfg.paths.output_root)
    device = resolve_device(cfg.device.name)
    if device.type == "cpu":  # before this process computes anything (bnstudy/training/kernels.py)
        kernels.choose(cfg.trainer.cpu_kernels, cfg.trainer.cpu_threads)
    check_memory(cfg, device)  # before reading (or fetching) data
    from bnstudy.data.datasets import load_dataset

    train, _ = load_dataset(
        cfg.dataset.name,
        cfg.dataset.root,
        cfg.dataset.download,
        cfg.data.train_subset,
        cfg.data.test_subset,
    )
    n_train = len(train.labels) - cfg.data.val_size
    if n_train < 1:
        raise ConfigError(
            f"data.val_size={cfg.data.val_size} leaves none of the {len(train.labels)} training "
            "images to train on; lower data.val_size or raise data.train_subset"
        )
    if n_train < cfg.batch_size:
        held = (
            f" (after holding out data.val_size={cfg.data.val_size})" if cfg.data.val_size else ""
        )
        raise ConfigError(
            f"batch_size={cfg.batch_size} exceeds the {n_train} training images{held}; lower "
            "batch_size or data.val_size, or raise data.train_subset"
        )
    return resolved(cfg)


def check_choices(choices: Any) -> None:
    """Refuse a group choice that is a schema (optim=sgd_schema): the YAML files are the
    choices (`python -m bnstudy.run --help`)."""
    for group, choice in choices.items():
        if isinstance(choice, str) and choice.endswith(SCHEMA_SUFFIX):
            offered = config_groups().get(group, [])
            raise ConfigError(
                f"{group}={choice} is not a choice; choose one of: {', '.join(offered)}"
            )


def _run_path_resolver(*, _root_: DictConfig) -> str:
    """`${bnstudy_run_path:}` in conf/config.yaml: the run folder of the config being run."""
    # Resolving the hydra node here would resolve hydra.run.dir, i.e. call this again.
    job = OmegaConf.masked_copy(_root_, [k for k in _root_ if k != "hydra"])
    try:
        check_choices(_root_.hydra.runtime.choices)
        return records.run_path(check(job))
    except ConfigError:
        if _root_.hydra.mode != RunMode.MULTIRUN:
            raise
        # One bad cell of a sweep must not stop the others (the sweep's shared values were
        # checked in SweepReport.on_multirun_start): the job fails and is recorded in this
        # folder, named from the unresolved config.
        return records.run_path(OmegaConf.to_container(job, resolve=True))


OmegaConf.register_new_resolver("bnstudy_run_path", _run_path_resolver, replace=True)


def _tuned_lr(*, _root_: DictConfig) -> float:
    """`${bnstudy_tuned_lr:}` (tuning=tuned, experiment=paper_tuned): this cell's lr as chosen
    on validation by the lr search in tuning.from."""
    folder = _root_.tuning["from"]
    if not folder:
        raise ConfigError(
            "tuning=tuned needs tuning.from=DIR, the output folder of a finished lr search "
            "(tuning=search, e.g. experiment=lr_search)"
        )
    from bnstudy.analysis.collect import ResultsError
    from bnstudy.analysis.tuned_lr import lr_for
    from bnstudy.analysis.tuning import TuningError

    search = _search(str(folder))
    try:
        return lr_for(search, _cell_of(_root_, search))
    except (TuningError, ResultsError) as e:
        raise ConfigError(f"tuning.from={folder}: {e}") from None


def _cell_of(root: DictConfig, search: Any) -> dict[str, Any]:
    """The identity values of the config being composed that the search's cells are told
    apart by (every key but the lr, which is being resolved), with its variant."""
    from bnstudy.analysis.collect import VARIANT, identity_columns

    absent = object()
    cell: dict[str, Any] = {}
    for key in identity_columns(search):
        if key in ("run_id", "optim.lr"):
            continue
        value = OmegaConf.select(root, key, default=absent)
        if value is not absent:
            cell[key] = value
    if "trainer.precision" in cell:  # the search recorded it resolved ("fp32", never "auto")
        device = resolve_device(root.device.name)
        cell["trainer.precision"] = resolve_precision(device, cell["trainer.precision"])
    cell[VARIANT] = variant_label(cell)
    return cell


@lru_cache(maxsize=4)
def _search(folder: str) -> Any:
    """The runs of the lr search in `folder`, with those it asked for that have no folder
    yet: a cell whose seeds have not all ended chooses no lr."""
    from bnstudy.analysis.asked import with_asked
    from bnstudy.analysis.collect import ResultsError, collect

    root = Path(folder).expanduser()
    try:
        runs, _ = collect(root)
    except ResultsError as e:
        raise ConfigError(f"tuning.from={folder}: {e}") from None
    return with_asked(root, runs)


OmegaConf.register_new_resolver("bnstudy_tuned_lr", _tuned_lr, replace=True)
