"""Benchmark `bnstudy.results` on many run folders written by the project's own records code.

    python scripts/bench_results.py --runs 1000 --epochs 200 [--plot] [--keep DIR]

The runs form a paper-like grid (4 models × 4 norms × batch sizes × seeds) with made-up
accuracies; the figures printed are the seconds to collect them and to build the tables.
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import tempfile
import time
from pathlib import Path

from bnstudy import records, results
from bnstudy.records import EPOCH_COLUMNS, RunFolder

MODELS = ["resnet18", "resnet34", "resnet50", "resnet101"]
NORMS = ["batchnorm", "affine", "bnminus", "none"]
BATCH_SIZES = [8, 16, 32, 64, 128, 256, 512]


def write_runs(root: Path, n_runs: int, epochs: int) -> None:
    rng = random.Random(0)
    # Seeds outermost, so any n_runs is whole grids plus part of one more.
    cells = list(itertools.product(MODELS, NORMS, BATCH_SIZES))
    grid = ((seed, *cell) for seed in itertools.count() for cell in cells)
    for seed, model, norm, batch_size in itertools.islice(grid, n_runs):
        config = {
            "dataset": {"name": "cifar10"},
            "model": {"name": model, "width": 64},
            "norm": {"name": norm},
            "batch_size": batch_size,
            "seed": seed,
            "optim": {"name": "sgd", "lr": 0.1},
            "trainer": {"epochs": epochs},
        }
        ident = {"run_id": records.run_id(config), **records.identity(config)}
        ceiling = {"batchnorm": 94, "bnminus": 92, "affine": 88, "none": 85}[norm]
        ceiling -= 4 * math.log2(512 / batch_size) / 6 + rng.random()
        rows = []
        for epoch in range(1, epochs + 1):
            acc = ceiling * (1 - math.exp(-epoch / (epochs / 5)))
            values = [epoch, 2.3 * math.exp(-epoch / 40), acc + 3, 0.3, acc, 0.1, 20.0, 2500.0]
            rows.append({**ident, **dict(zip(EPOCH_COLUMNS, values, strict=True))})
        folder = RunFolder(root / records.run_path(config))
        folder.path.mkdir(parents=True)
        folder.write_metrics(rows)
        best = max(rows, key=lambda r: r["test_acc"])
        folder.write_summary(
            {
                **ident,
                "status": "completed",
                "epochs_done": epochs,
                "final_test_acc": rows[-1]["test_acc"],
                "best_test_acc": best["test_acc"],
                "best_epoch": best["epoch"],
                "n_params": 11173962,
                "n_norm_params": 9600,
                "wall_seconds": 3600.0,
                "device": "cuda",
            }
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--plot", action="store_true", help="also time the figures")
    parser.add_argument("--keep", type=Path, help="write the runs here and keep them")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        started = time.perf_counter()
        write_runs(root, args.runs, args.epochs)
        print(
            f"wrote {args.runs} runs × {args.epochs} epochs in "
            f"{time.perf_counter() - started:.1f} s"
        )
        started = time.perf_counter()
        runs, epochs = results.collect(root)
        collected = time.perf_counter() - started
        text = results.report(runs)
        reported = time.perf_counter() - started - collected
        print(f"collect: {collected:.2f} s ({len(runs)} runs, {len(epochs)} epoch rows)")
        print(f"tables:  {reported:.2f} s ({text.count(chr(10))} lines)")
        if args.plot:
            started = time.perf_counter()
            figures = results.plot(runs, epochs, root)
            print(f"figures: {time.perf_counter() - started:.2f} s ({len(figures)} files)")


if __name__ == "__main__":
    main()
