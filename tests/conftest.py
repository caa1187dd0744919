"""Shared test helpers: tiny dataset files in the real formats, and the real CLI in a subprocess."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

import bnstudy.run  # noqa: F401  (registers the schema and the run-folder resolver)

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]

# Small enough to train in seconds on 2 CPU cores.
TINY = [
    "dataset=fashion_mnist",
    "model.width=8",
    "device=cpu",
    "trainer.epochs=2",
    "data.train_subset=256",
    "data.test_subset=128",
    "batch_size=64",
]


def make_config(*overrides: str):
    """The job config `python -m bnstudy.run OVERRIDES` composes (without Hydra's own node)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def write_idx(path: Path, array: np.ndarray, ndim: int | None = None) -> None:
    """An idx file of unsigned bytes, gzipped, as Fashion-MNIST ships (`ndim` overrides the
    header's dimension count, to write a damaged header)."""
    ndim = array.ndim if ndim is None else ndim
    header = struct.pack(">I", 0x0800 | ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_fashion_mnist(folder: Path, n_train: int = 64, n_test: int = 32) -> Path:
    """The four Fashion-MNIST idx .gz files with random images; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return folder


def write_cifar_batch(path: Path, images: np.ndarray, labels: list[int]) -> None:
    """A batch exactly as the official Python-2 pickles hold it: bytes keys, N×3072 uint8."""
    batch = {
        b"batch_label": b"tiny batch",
        b"labels": labels,
        b"data": images.reshape(len(images), -1),
        b"filenames": [f"img{i}.png".encode() for i in range(len(images))],
    }
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


@pytest.fixture
def tiny_cifar(tmp_path: Path) -> Path:
    """A cifar-10-batches-py folder with 8 images per file; returns the folder above it."""
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate(CIFAR_FILES):
        images = rng.integers(0, 256, (8, 3, 32, 32), dtype=np.uint8)
        write_cifar_batch(folder / name, images, [(i + j) % 10 for j in range(8)])
    return folder.parent


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m bnstudy.run ARGS` in a fresh process, as a user types it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", "bnstudy.run", *args],
        cwd=cwd or REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def write_run(
    root: Path,
    norm: str,
    batch_size: int,
    seed: int,
    test_accs: list[float],
    status: str = "completed",
    model: str = "resnet18",
    error: str = "",
) -> Path:
    """A run folder written by the real records code, with the given test accuracy per epoch."""
    from bnstudy import records
    from bnstudy.records import EPOCH_COLUMNS, RunFolder

    config = {
        "dataset": {"name": "cifar10"},
        "model": {"name": model, "width": 64},
        "norm": {"name": norm},
        "batch_size": batch_size,
        "seed": seed,
        "optim": {"name": "sgd", "lr": 0.1},
        "trainer": {"epochs": 3},
    }
    ident = {"run_id": records.run_id(config), **records.identity(config)}
    rows = [
        {
            **ident,
            **dict(zip(EPOCH_COLUMNS, [e, 1.0 / e, acc, 0.5, acc, 0.1, 2.0, 100.0], strict=True)),
        }
        for e, acc in enumerate(test_accs, start=1)
    ]
    folder = RunFolder(root / records.run_path(config))
    folder.path.mkdir(parents=True)
    folder.write_metrics(rows)
    folder.write_summary(
        {
            **ident,
            "status": status,
            "epochs_done": len(rows),
            "error": error,
            "final_test_acc": test_accs[-1] if test_accs else None,
            "best_test_acc": max(test_accs) if test_accs else None,
            "best_epoch": test_accs.index(max(test_accs)) + 1 if test_accs else None,
        }
    )
    return folder.path
