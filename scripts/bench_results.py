"""Benchmark `bnstudy.results` on many run folders written by the project's own records code.

    python scripts/bench_results.py --runs 1000 --epochs 200 [--layers 70] [--plot] [--keep DIR]

The runs form a paper-like grid (4 models × 4 norms × batch sizes × seeds) with made-up
accuracies (and, with --layers N, a layers.csv of N rows per epoch); the figures printed are
the seconds to collect them and to build the tables.
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from bnstudy import records
from bnstudy.analysis.collect import collect, collect_layers
from bnstudy.analysis.figures import plot
from bnstudy.analysis.tables import report
from bnstudy.config.preflight import resolved
from bnstudy.config.schema import CONF_DIR
from bnstudy.records import LAYERS_FILE, EpochMetrics, LayerStats, RunFolder, Summary

MODELS = ["resnet18", "resnet34", "resnet50", "resnet101"]
NORMS = ["batchnorm", "affine", "bnminus", "none"]
BATCH_SIZES = [8, 16, 32, 64, 128, 256, 512]


def write_runs(root: Path, n_runs: int, epochs: int, layers: int = 0) -> None:
    rng = random.Random(0)
    # Seeds outermost, so any n_runs is whole grids plus part of one more.
    cells = list(itertools.product(MODELS, NORMS, BATCH_SIZES))
    grid = ((seed, *cell) for seed in itertools.count() for cell in cells)
    configs = {}
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for model, norm, batch_size in cells:  # the real composed configs, seed aside
            overrides = [f"model={model}", f"norm={norm}", f"batch_size={batch_size}"]
            cfg = compose("config", [*overrides, f"trainer.epochs={epochs}", "device=cpu"])
            configs[model, norm, batch_size] = resolved(cfg)
    for seed, model, norm, batch_size in itertools.islice(grid, n_runs):
        config = {**configs[model, norm, batch_size], "seed": seed}
        ident = records.identity(config)
        ceiling = {"batchnorm": 94, "bnminus": 92, "affine": 88, "none": 85}[norm]
        ceiling -= 4 * math.log2(512 / batch_size) / 6 + rng.random()
        history = []
        for epoch in range(1, epochs + 1):
            acc = ceiling * (1 - math.exp(-epoch / (epochs / 5)))
            loss = 2.3 * math.exp(-epoch / 40)
            history.append(
                EpochMetrics(epoch, loss, acc + 3, 0.3, acc + 1, 0.3, acc, 0.1, 20.0, 2500.0)
            )
        folder = RunFolder(root / records.run_path(config))
        folder.path.mkdir(parents=True)
        folder.write_metrics(ident, history)
        summary = Summary("completed", **records.progress(history), n_params=11173962)
        folder.write_summary(ident, summary)
        if layers:  # the shape of diagnostics rows: half norm layers, half blocks
            rows = [
                LayerStats(e, f"stages.{i % 4}.{i}", "norm", i % 4 + 1, i, 64, 1.0, 0.1, 0.8, 1.2,
                           0.0, 0.0, 0.1)
                if i % 2
                else LayerStats(e, f"stages.{i % 4}.{i}", "block", i % 4 + 1, i, 64,
                                act_mean=0.5, act_std=1.0, grad_norm=0.3)
                for e in range(epochs + 1)
                for i in range(layers)
            ]  # fmt: skip
            folder.write_layers(ident, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--layers", type=int, default=0, help="layers.csv rows per epoch")
    parser.add_argument("--plot", action="store_true", help="also time the figures")
    parser.add_argument("--keep", type=Path, help="write the runs here and keep them")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        started = time.perf_counter()
        write_runs(root, args.runs, args.epochs, args.layers)
        print(
            f"wrote {args.runs} runs × {args.epochs} epochs in "
            f"{time.perf_counter() - started:.1f} s"
        )
        started = time.perf_counter()
        runs, epochs = collect(root)
        collected = time.perf_counter() - started
        text = report(runs)
        reported = time.perf_counter() - started - collected
        print(f"collect: {collected:.2f} s ({len(runs)} runs, {len(epochs)} epoch rows)")
        print(f"tables:  {reported:.2f} s ({text.count(chr(10))} lines)")
        layers = None
        if args.layers:
            started = time.perf_counter()
            layers = collect_layers(root, runs)
            gathered = layers.to_csv(index=False).encode()
            (root / LAYERS_FILE).write_bytes(gathered)
            print(
                f"layers:  {time.perf_counter() - started:.2f} s to collect and write "
                f"{len(layers):,} rows ({len(gathered) / 2**20:,.0f} MiB)"
            )
        if args.plot:
            started = time.perf_counter()
            figures = plot(runs, epochs, root, layers)
            print(f"figures: {time.perf_counter() - started:.2f} s ({len(figures)} files)")


if __name__ == "__main__":
    main()
