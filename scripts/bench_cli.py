"""How long the command line takes to answer when nothing is trained: --help, --cfg job, and
one-line refusals. A benchmark that prints figures (the median of --repeats runs), not a test:

    python scripts/bench_cli.py [--repeats 5]

`import bnstudy.run` imports no torch, so these answers cost Hydra's start and no more; a
refusal that needs the device or the dataset files imports torch (about 2.5 s more).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

COMMANDS = {
    "--help": ["--help"],
    "--cfg job": ["--cfg", "job"],
    "optim.lr=nan (refused)": ["optim.lr=nan"],
    "model.widht=8 (refused)": ["model.widht=8"],
    "-m norm=batchnorm, none (refused)": ["-m", "norm=batchnorm,", "none"],
    "experiment=paper (refused: a grid)": ["experiment=paper"],
    "missing dataset files (refused; imports torch)": [
        "dataset=fashion_mnist",
        "dataset.root=/nonexistent",
    ],
}


def seconds(args: list[str], repeats: int) -> float:
    times = []
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(repeats):
            started = time.perf_counter()
            command = [sys.executable, "-m", "bnstudy.run", *args]
            subprocess.run([*command, f"paths.output_root={scratch}"], capture_output=True)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    torch_s = time.perf_counter() - started
    print(f"python -c 'import torch' alone: {torch_s:.2f} s")
    for name, command in COMMANDS.items():
        print(f"python -m bnstudy.run {name}: {seconds(command, args.repeats):.2f} s")


if __name__ == "__main__":
    main()
