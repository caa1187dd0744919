"""A sweep's cells: the override combinations Hydra's basic sweeper makes, the cells planned
when the sweep starts (read by launchers that submit jobs), and where a launcher runs its
jobs (on this machine or on SLURM).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

# Launchers whose jobs run on this machine, as processes the sweep's process may outlive
# (or as itself): their jobs stop when it ends. Any other launcher's jobs run elsewhere.
LOCAL_LAUNCHERS = (
    "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
    "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
)


@dataclass(frozen=True)
class Cell:
    """One run of a sweep: its override combination, identity and folder."""

    overrides: tuple[str, ...]
    identity: dict[str, Any]
    run_dir: Path

    @property
    def name(self) -> str:
        return self.run_dir.name


# The cells of the sweep this process runs, by override combination: planned once when the
# sweep starts, read by launchers that submit jobs (hydra_plugins/bnstudy_launcher).
_PLANNED: dict[tuple[str, ...], Cell] = {}


def combinations(params: dict[str, Any], overrides: list[str]) -> list[list[str]]:
    """Every override combination of a multirun, as Hydra's basic sweeper makes them: the
    sweeper's `params` (an experiment's grid) and the command line's `overrides`."""
    texts = [f"{k}={v}" for k, v in params.items()] + list(overrides)
    parsed = OverridesParser.create().parse_overrides(texts)
    [combos] = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return combos


def planned(overrides: list[str]) -> Cell | None:
    """The cell of the running sweep with these overrides (None outside a planned sweep)."""
    return _PLANNED.get(tuple(overrides))


def remember(cells: list[Cell]) -> None:
    """The planned cells of the sweep that starts in this process (see `planned`)."""
    _PLANNED.clear()
    _PLANNED.update({cell.overrides: cell for cell in cells})


def forget() -> None:
    """The sweep of this process has ended: no cell is planned."""
    _PLANNED.clear()


def runs_here(config: DictConfig) -> bool:
    """Whether the sweep's launcher runs its jobs on this machine (see LOCAL_LAUNCHERS)."""
    return OmegaConf.select(config, "hydra.launcher._target_") in LOCAL_LAUNCHERS


def on_slurm(config: DictConfig) -> bool:
    """Whether the sweep's launcher submits its jobs to SLURM (bnstudy's presets or
    hydra-submitit-launcher's own)."""
    return str(OmegaConf.select(config, "hydra.launcher._target_")).endswith("SlurmLauncher")
