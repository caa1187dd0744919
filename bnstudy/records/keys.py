"""A run's identity: every key of the resolved config that can change its numbers, flattened
(optim.weight_decay) and hashed into `run_id`; the keys that name its folder; and the folder's
path, a pure function of the config, so that rerunning a config finds its earlier run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

# Config keys that say where or how visibly a run happens, not what it computes: changing them
# finds the same run folder (a run started on one GPU can finish on another). Every other key
# of the resolved config is part of the run's identity.
NON_IDENTITY_KEYS = (
    "hydra",
    "paths",
    "tuning",  # where a tuned lr was read from; the lr itself is part of the identity
    "device",
    "dataset.root",
    "dataset.download",
    "trainer.progress",
    "trainer.log_every",
    "trainer.diagnostics",  # records more, computes the same
    "trainer.tensorboard",
    # Speed only: the same numbers up to floating-point rounding.
    "trainer.channels_last",
    "trainer.compile",
    "trainer.cudnn_benchmark",
    "trainer.deterministic",
    "data.eval_batch_size",
)


# The identity keys that name a run's folder and head the results' tables.
DATASET, MODEL, WIDTH, NORM = "dataset.name", "model.name", "model.width", "norm.name"


BATCH_SIZE, SEED = "batch_size", "seed"


def _flatten(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if dotted in NON_IDENTITY_KEYS:
            continue
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """`run_id`, then every value of the resolved config (a plain dict) that can change the
    run's numbers, flattened to dotted keys (optim.weight_decay). These head every row of
    metrics.csv and summary.csv, so files from many runs concatenate without any other source,
    and two runs that differ in any of them never share a folder, a hash or a table cell."""
    flat = _flatten(config)
    text = json.dumps(flat, sort_keys=True, default=str)
    return {"run_id": hashlib.sha256(text.encode()).hexdigest()[:8], **flat}


def run_id(config: Mapping[str, Any]) -> str:
    """Eight hex digits that change whenever a value that affects the results changes."""
    return identity(config)["run_id"]


def run_path(config: Mapping[str, Any]) -> str:
    """The run folder, relative to paths.output_root: readable, and unique per config."""
    i = identity(config)
    name = f"{i[MODEL]}-w{i[WIDTH]}-{i[NORM]}-bs{i[BATCH_SIZE]}-seed{i[SEED]}"
    return f"{i[DATASET]}/{name}-{i['run_id']}"
