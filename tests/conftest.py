"""Shared test helpers: tiny dataset files in the real formats, and the real CLI in a subprocess."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]

# Small enough to train in seconds on 2 CPU cores.
TINY = [
    "dataset=fashion_mnist",
    "model.width=4",
    "device=cpu",
    "trainer.epochs=2",
    "data.train_subset=256",
    "data.test_subset=128",
    "batch_size=64",
]


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
