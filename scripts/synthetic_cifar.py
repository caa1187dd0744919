"""Write a CIFAR-10 of random images in the official file format, for timing where the real
files are not at hand (the GPU machine of scripts/device_check.sh has no network).

    python scripts/synthetic_cifar.py DIR [--per-batch 10000] [--seed 0]

DIR/cifar-10-batches-py/ then holds data_batch_1..5, test_batch and batches.meta as the
official python batches hold them (Python 2 pickles of dicts of Python 2 strings, N×3072 uint8
rows, a list of labels), so `dataset=cifar10 dataset.root=DIR dataset.download=false` reads it
with bnstudy's reader, and the benchmark's reference loop with torchvision's, at the paper's
input size 3×32×32. The content is uniform noise: its throughput
is CIFAR-10's, its accuracies mean nothing. A SYNTHETIC.txt beside the batches says so.
"""

from __future__ import annotations

import argparse
import pickle
import struct
from pathlib import Path

import numpy as np
from torchvision.datasets import CIFAR10

IMAGE_BYTES = 3 * 32 * 32
CLASSES = 10


class _Python2Pickler(pickle._Pickler):
    """Pickles bytes as Python 2 wrote its str (BINSTRING), as in the official batches: the
    reader's `encoding` then decides what they become (bytes for bnstudy's reader, str for
    torchvision's `encoding="latin1"`). Python 3 would write bytes as calls of codecs.encode,
    which stay bytes whatever the encoding."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_python2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_python2_str


def _dump(obj: object, path: Path) -> None:
    with open(path, "wb") as f:
        _Python2Pickler(f, protocol=2).dump(obj)


def write_batch(path: Path, images: np.ndarray, labels: list[int], label: str) -> None:
    """One batch as the official files hold it."""
    batch = {
        b"batch_label": label.encode(),
        b"labels": labels,
        b"data": images,
        b"filenames": [f"synthetic_{i:05d}.png".encode() for i in range(len(images))],
    }
    _dump(batch, path)


def write_meta(path: Path, per_batch: int) -> None:
    meta = {
        b"num_cases_per_batch": per_batch,
        b"label_names": [f"class_{c}".encode() for c in range(CLASSES)],
        b"num_vis": IMAGE_BYTES,
    }
    _dump(meta, path)


def write_synthetic_cifar(root: Path, per_batch: int = 10_000, seed: int = 0) -> Path:
    """The folder cifar-10-batches-py under `root`, filled with random images; returns it."""
    folder = root / CIFAR10.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [name for name, _ in CIFAR10.train_list + CIFAR10.test_list]
    for i, name in enumerate(names, start=1):
        images = rng.integers(0, 256, (per_batch, IMAGE_BYTES), dtype=np.uint8)
        labels = rng.integers(0, CLASSES, per_batch).tolist()
        write_batch(folder / name, images, labels, f"synthetic batch {i} of {len(names)}")
    write_meta(folder / CIFAR10.meta["filename"], per_batch)
    (folder / "SYNTHETIC.txt").write_text(
        "Random uint8 images in CIFAR-10's file format, written by scripts/synthetic_cifar.py "
        f"(seed {seed}) for throughput measurements; not CIFAR-10.\n"
    )
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="folder to hold cifar-10-batches-py/")
    parser.add_argument("--per-batch", type=int, default=10_000, help="images per file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    folder = write_synthetic_cifar(args.root, args.per_batch, args.seed)
    n_train = len(CIFAR10.train_list) * args.per_batch
    n_test = len(CIFAR10.test_list) * args.per_batch
    print(f"synthetic CIFAR-10 (random content): {n_train:,} + {n_test:,} images in {folder}")


if __name__ == "__main__":
    main()
