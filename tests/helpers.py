"""Helpers the tests import: tiny dataset files in the real formats, the real CLI in a
subprocess, synthetic run folders and table readers. Fixtures live in conftest.py."""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import os
import pickle
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir

import bnstudy.run  # noqa: F401  (registers the schema and the run-folder resolver)

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]

# Small enough to train in seconds on 2 CPU cores (conf/debug/fast.yaml).
TINY = ["debug=fast"]


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


def run_cli(
    *args: str,
    cwd: Path | None = None,
    module: str = "bnstudy.run",
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`python -m bnstudy.run ARGS` (or another of bnstudy's commands) in a fresh process, as a
    user types it (in this environment, or in `env`)."""
    env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd or REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def wait_for(condition, seconds: float, what: str, poll: float = 0.1) -> float:
    """Wait until `condition()` is true; the seconds it took. AssertionError naming `what`
    after `seconds`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > seconds:
            raise AssertionError(f"not within {seconds} s: {what}")
        time.sleep(poll)
    return time.monotonic() - started


def run_config(
    norm: str, batch_size: int, seed: int, model: str = "resnet18", overrides: tuple = ()
) -> dict:
    """The resolved config of write_run's runs (CIFAR-10, 3 epochs, plus `overrides`)."""
    from bnstudy.config import preflight

    return preflight.resolved(
        make_config(
            "dataset=cifar10",
            f"model={model}",
            f"norm={norm}",
            f"batch_size={batch_size}",
            f"seed={seed}",
            "trainer.epochs=3",
            "device=cpu",
            *overrides,
        )
    )


def write_grid(root: Path, cells: list[tuple]) -> Path:
    """A sweep's grid record (.sweeps/*.grid.json, as bnstudy.config.callbacks writes it): the
    runs it was asked for, each given as run_config's arguments."""
    from bnstudy import records
    from bnstudy.records.ledger import GRID_SUFFIX, LEDGER_DIR

    identities = [records.identity(run_config(*cell)) for cell in cells]
    path = root / LEDGER_DIR / f"test{GRID_SUFFIX}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(identities, default=str))
    return path


def write_run(
    root: Path,
    norm: str,
    batch_size: int,
    seed: int,
    test_accs: list[float],
    status: str = "completed",
    model: str = "resnet18",
    error: str = "",
    val_accs: list[float] | None = None,
    overrides: tuple[str, ...] = (),
    reason: str = "",
) -> Path:
    """A run folder written by the real records code for the real composed config (CIFAR-10,
    3 epochs, plus `overrides`), with the given test (and validation) accuracy per epoch. A
    diverged run diverged in the epoch after its last (`reason`: why, records.OPTIMIZATION
    by default)."""
    from bnstudy import records
    from bnstudy.records import EpochMetrics, RunFolder, Summary

    config = run_config(norm, batch_size, seed, model, overrides)
    ident = records.identity(config)
    val_accs = val_accs or [None] * len(test_accs)
    epochs = [
        EpochMetrics(
            epoch=e,
            train_loss=1.0 / e,
            train_acc=acc,
            val_loss=None if val is None else 0.4,
            val_acc=val,
            test_loss=0.5,
            test_acc=acc,
            epoch_lr=0.1,
            epoch_seconds=2.0,
            train_images_per_s=100.0,
        )
        for e, (acc, val) in enumerate(zip(test_accs, val_accs, strict=True), start=1)
    ]
    folder = RunFolder(root / records.run_path(config))
    folder.path.mkdir(parents=True)
    folder.write_metrics(ident, epochs)
    diverged = {}
    if status == "diverged":
        diverged = {
            "diverged_epoch": len(epochs) + 1,
            "diverged_reason": reason or records.OPTIMIZATION,
        }
    summary = Summary(status, **records.progress(epochs), error=error, **diverged)
    folder.write_summary(ident, summary)
    return folder.path


def read_table(text: str, fmt: str, index: int = 0) -> tuple[str, dict[str, list[str]]]:
    """The title and the rows ({variant: [cells]}) of table `index` of a `results` output in
    `fmt`, read back as a reader would. For text, whose empty cells leave no trace, a row is
    its non-empty cells."""
    if fmt == "csv":
        blocks = [b for b in text.split("\n\n") if b.startswith("# ")]
        title, body = blocks[index].split("\n", 1)
        rows = list(csv.reader(io.StringIO(body)))[1:]
        return title.removeprefix("# "), {r[0]: r[1:] for r in rows}
    if fmt == "latex":
        block = text.split("\\end{table}")[index]
        title = block.split("\\caption{")[1].split("}\n")[0]
        body = block.split("\\midrule\n")[1].split("\\bottomrule")[0]
        rows = [r.removesuffix(" \\\\").split(" & ") for r in body.splitlines()]
        return unescape(title), {unescape(r[0]): [unescape(c) for c in r[1:]] for r in rows}
    lines = text.splitlines()
    if fmt == "markdown":
        start = [i for i, line in enumerate(lines) if line.startswith("**")][index]
        rows = itertools.takewhile(lambda r: r.startswith("|"), lines[start + 2 :])
        body = list(rows)[2:]  # the header and the rule first
        cells = [[c.strip() for c in r.split("|")[1:-1]] for r in body]
        return lines[start].strip("*"), {c[0]: c[1:] for c in cells}
    starts = [i for i, line in enumerate(lines) if line and (i == 0 or not lines[i - 1])]
    start = starts[index]
    end = lines.index("", start + 1) if "" in lines[start + 1 :] else len(lines)
    body = lines[start + 2 : end]  # the title, then the header
    cells = [re.split(r"\s{2,}", row.strip()) for row in body]
    return lines[start], {c[0]: c[1:] for c in cells}


def unescape(latex: str) -> str:
    """What bnstudy.analysis.tables escapes for LaTeX, back as it is printed elsewhere."""
    for old, new in (("$\\pm$", "±"), ("\\_", "_"), ("\\%", "%"), ("--", "–")):
        latex = latex.replace(old, new)
    return latex


def cells_shown(report: str) -> str:
    """The results report without its table titles: the words a run's status can be (a title
    explains `diverged k/N`, `missing`, … in general)."""
    return "\n".join(line for line in report.splitlines() if " — " not in line)
