"""Dataset readers: the real files -> uint8 tensors, checked; the table of datasets; subsets
and the validation split. The loader that feeds them to the model is bnstudy/data/loader.py.
"""

from __future__ import annotations

import gzip
import io
import logging
import math
import pickle
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision.datasets import CIFAR10, FashionMNIST
from torchvision.datasets.utils import check_integrity, download_and_extract_archive, download_url

from bnstudy.errors import DatasetError  # noqa: F401  (re-exported: part of the readers' interface)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    images: Tensor  # uint8, N×C×H×W
    labels: Tensor  # int64, N


@dataclass(frozen=True)
class DatasetSpec:
    size: int  # images are size × size
    channels: int
    classes: int
    # Per-channel mean/std of the training images in [0, 1], used to normalize inputs.
    mean: tuple[float, ...]
    std: tuple[float, ...]
    read: Callable[[Path, bool], tuple[Split, Split]]  # (root, download) -> (train, test)
    # (root, scratch folder, per-image transform) -> the training set as torchvision reads it:
    # what the benchmark's hand-written reference loop uses.
    torchvision: Callable[[Path, Path, Callable], torch.utils.data.Dataset]


_IDX_MAX_DIMS = 4  # images are 3-d, labels 1-d; a larger count is a damaged header


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (gzipped or not) of unsigned bytes into an array of its shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # flipped bytes end in zlib's own error
        raise DatasetError(f"{path}: cannot read ({e}); delete it and fetch it again") from None
    if len(data) < 4:
        raise DatasetError(f"{path}: too short to be an idx file; delete it and fetch it again")
    magic = struct.unpack(">I", data[:4])[0]
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte payload
        raise DatasetError(f"{path}: not an idx file of unsigned bytes (magic {magic:#x})")
    ndim = magic & 0xFF
    if not 1 <= ndim <= _IDX_MAX_DIMS or len(data) < 4 + 4 * ndim:
        raise DatasetError(
            f"{path}: damaged idx header ({ndim} dimensions); delete it and fetch it again"
        )
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    payload = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if payload.size != math.prod(shape):
        raise DatasetError(
            f"{path}: header says {shape} but holds {payload.size} bytes; delete it and fetch "
            "it again"
        )
    return payload.reshape(shape)


def _fashion_mnist_split(root: Path, prefix: str) -> Split:
    images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(
            f"{root}: {prefix} images {images.shape} do not match labels {labels.shape}"
        )
    return Split(
        torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))
    )


def read_fashion_mnist(root: Path, download: bool) -> tuple[Split, Split]:
    """Fashion-MNIST from the four idx .gz files in `root` (Debian: dataset-fashion-mnist)."""
    names = [name for name, _ in FashionMNIST.resources]
    missing = [n for n in names if not (root / n).is_file()]
    if missing and download:
        for name, md5 in FashionMNIST.resources:
            if name in missing:
                _download(FashionMNIST.mirrors[0] + name, root, name, md5)
    elif missing:
        raise DatasetError(
            f"Fashion-MNIST files missing in {root}: {', '.join(missing)}. Install them with "
            "`apt-get install dataset-fashion-mnist`, or set dataset.root=DIR to a folder holding "
            "them, or dataset.download=true"
        )
    return _fashion_mnist_split(root, "train"), _fashion_mnist_split(root, "t10k")


def torchvision_fashion_mnist(root: Path, scratch: Path, transform: Callable):
    # torchvision wants FashionMNIST/raw/<uncompressed files>; stage them from the .gz.
    raw = scratch / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, _ in FashionMNIST.resources:
        with gzip.open(root / name) as src, open(raw / name.removesuffix(".gz"), "wb") as dst:
            shutil.copyfileobj(src, dst)
    return FashionMNIST(str(scratch), train=True, transform=transform)


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only, so a tampered batch cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        # Python 3 pickles bytes at protocol 2 through codecs.encode: a data transform only.
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise DatasetError(f"refusing to load {module}.{name}: not part of a CIFAR-10 batch")
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch -> (uint8 images N×3×32×32, int64 labels N)."""
    try:
        raw = path.read_bytes()
        batch = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except DatasetError as e:
        raise DatasetError(
            f"{path}: {e}; this file was altered, delete it and download again"
        ) from None
    except Exception as e:  # unpickling damaged bytes raises almost any kind of error
        raise DatasetError(
            f"{path}: not a CIFAR-10 python batch ({type(e).__name__}); delete it and download "
            "again"
        ) from None
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: not a CIFAR-10 python batch (no dict inside)")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DatasetError(f"{path}: 'data' is not a uint8 N×3072 array")
    if data.shape[1] != 3 * 32 * 32 or not isinstance(labels, list) or len(labels) != len(data):
        raise DatasetError(f"{path}: 'data' {data.shape} and 'labels' do not match CIFAR-10")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def _cifar_folder(root: Path) -> Path:
    return root if root.name == CIFAR10.base_folder else root / CIFAR10.base_folder


def read_cifar10(root: Path, download: bool) -> tuple[Split, Split]:
    """CIFAR-10 from `root`/cifar-10-batches-py (downloaded and checksummed when allowed)."""
    folder = _cifar_folder(root)
    files = CIFAR10.train_list + CIFAR10.test_list
    missing = [name for name, _ in files if not (folder / name).is_file()]
    if missing and download:
        try:
            download_and_extract_archive(CIFAR10.url, str(root), md5=CIFAR10.tgz_md5)
        except Exception as e:  # urllib raises many kinds; all mean "could not fetch"
            raise DatasetError(
                f"CIFAR-10 download to {root} failed ({e}). Put the official python batches "
                f"(cifar-10-python.tar.gz, extracted) in {folder}, or set dataset.root=DIR"
            ) from e
    elif missing:
        raise DatasetError(
            f"CIFAR-10 files missing in {folder}: {', '.join(missing)}. Extract the official "
            "cifar-10-python.tar.gz there, set dataset.root=DIR, or set dataset.download=true"
        )
    if download:  # files we fetched (or were told to fetch) must be the official ones
        for name, md5 in files:
            if not check_integrity(str(folder / name), md5):
                raise DatasetError(f"{folder / name}: checksum mismatch; delete it and rerun")

    def split(names: list[list[str]]) -> Split:
        parts = [read_cifar_batch(folder / name) for name, _ in names]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        return Split(torch.from_numpy(images), torch.from_numpy(labels))

    return split(CIFAR10.train_list), split(CIFAR10.test_list)


class _AcceptedCIFAR10(CIFAR10):
    """torchvision's CIFAR10 without its MD5 checks, which refuse any bytes but the official
    ones: bnstudy's reader has accepted these files already (it checksums only what it
    downloads), and the benchmark's synthetic batches (scripts/synthetic_cifar.py) have the
    official format, not the official content. What the reference loop times, torchvision's
    reading and per-image transforms, is unchanged."""

    def _check_integrity(self) -> bool:
        return True

    def _load_meta(self) -> None:  # batches.meta holds only the class names, unused here
        self.classes = [str(c) for c in range(10)]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


def torchvision_cifar10(root: Path, scratch: Path, transform: Callable):
    return _AcceptedCIFAR10(str(_cifar_folder(root).parent), train=True, transform=transform)


def _download(url: str, root: Path, name: str, md5: str) -> None:
    try:
        download_url(url, str(root), filename=name, md5=md5)
    except Exception as e:  # urllib raises many kinds; all mean "could not fetch"
        raise DatasetError(f"download of {url} to {root} failed ({e}); fetch it by hand") from e


# The one list of datasets: conf/dataset/*.yaml offer exactly these names.
DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(
        size=32,
        channels=3,
        classes=10,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        read=read_cifar10,
        torchvision=torchvision_cifar10,
    ),
    "fashion_mnist": DatasetSpec(
        size=28,
        channels=1,
        classes=10,
        mean=(0.2860,),
        std=(0.3530,),
        read=read_fashion_mnist,
        torchvision=torchvision_fashion_mnist,
    ),
}


def load_dataset(
    name: str, root: str | Path, download: bool, train_subset: int | None, test_subset: int | None
) -> tuple[Split, Split]:
    """Read dataset `name` from `root` and keep the first N images of each split when asked."""
    train, test = _read(name, Path(root).expanduser(), download)
    return _first(train, train_subset), _first(test, test_subset)


@lru_cache(maxsize=1)
def _read(name: str, root: Path, download: bool) -> tuple[Split, Split]:
    """Both splits, checked; kept for the next call: the pre-run check reads the files and the
    run (or the next run of a sweep) uses them without reading again."""
    spec = DATASETS[name]
    splits = spec.read(root, download)
    for split, which in zip(splits, ("training", "test"), strict=True):
        labels = split.labels
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= spec.classes):
            raise DatasetError(
                f"{root}: {which} labels of {name} lie outside 0..{spec.classes - 1} (found "
                f"{int(labels.min())}..{int(labels.max())}); the files are damaged, fetch them "
                "again"
            )
    return splits


def _first(split: Split, n: int | None) -> Split:
    return split if n is None else Split(split.images[:n], split.labels[:n])


def hold_out(train: Split, val_size: int, seed: int) -> tuple[Split, Split | None]:
    """Split `val_size` validation images off the training split: a seeded permutation that
    depends on `seed` alone (not on the run's seed), so every run of a study sees the same
    validation images. Returns (train, validation), validation None when val_size is 0."""
    if val_size == 0:
        return train, None
    order = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(seed))
    # Sorted, so the training images keep their file order (and the loader its shuffles).
    val, kept = order[:val_size].sort().values, order[val_size:].sort().values
    return Split(train.images[kept], train.labels[kept]), Split(
        train.images[val], train.labels[val]
    )
