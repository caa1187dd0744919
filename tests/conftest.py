"""Fixtures, and what every test process needs before it computes anything."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bnstudy.training import kernels
from tests.helpers import CIFAR_FILES, write_cifar_batch

# The tests that compute in this process do so with the kernels a run uses by default, chosen
# before anything is computed (bnstudy/training/kernels.py); subprocesses choose their own.
kernels.choose("portable", 2)


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
