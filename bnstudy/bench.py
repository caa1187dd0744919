"""Training speed of bnstudy against the loop a researcher would write by hand.

    python -m bnstudy.bench model=resnet18 batch_size=64 device=cpu [--steps 20] [--variants]
        [--profile 15]

Takes the same overrides as `bnstudy.run`. Measures steady-state training images/s (after
warm-up steps), time per step and peak memory for bnstudy's training path and for the
reference loop (a torchvision dataset, per-image transforms, a DataLoader, the same model and
SGD in fp32) on the same model, data and device; prints a table with their ratio, writes it
as CSV, and estimates the time of the full paper grid on this device. Each measurement runs in
a fresh process, so its peak memory is its own. `--profile N` lists the N kernels (CUDA) or
operators (CPU) that take the most time, from torch.profiler, and writes them as CSV.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import sys
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from bnstudy.config.preflight import load_config, resolved
from bnstudy.config.schema import CONF_DIR, resolve_device
from bnstudy.data.datasets import DATASETS
from bnstudy.errors import ConfigError, DatasetError, first_line, one_line
from bnstudy.records import identity, write_csv
from bnstudy.study.norms import NORMS
from bnstudy.sweeps.stopping import EXIT_INTERRUPTED, GRACE_SECONDS, stops_within_seconds
from bnstudy.training import kernels
from bnstudy.training.kernels import KERNELS
from bnstudy.training.parts import build_model
from bnstudy.training.speed import (
    PROFILE_STEPS,
    measure_bnstudy,
    measure_reference,
)

COLUMNS = (
    "path", "device", "model", "width", "norm", "batch_size", "precision", "channels_last",
    "compile", "cpu_kernels", "images_per_s", "ms_per_step", "peak_memory_mb", "vs_reference",
)  # fmt: skip


PROFILE_COLUMNS = ("kernel", "calls", "total_ms", "share_pct", "busy_pct", "wall_ms", "steps")


def _in_fresh_process(function: Any, *args: Any) -> dict[str, Any]:
    """Run a measurement in a new process: clean peak memory, no state from the last one.
    The process ends with this one: on Ctrl-C or any error here it is terminated (killed if
    it does not stop), and if this process is killed it stops itself (stopping.py)."""
    # spawn, not a Pool: the child may start DataLoader workers of its own.
    spawn = multiprocessing.get_context("spawn")
    receive, send = spawn.Pipe(duplex=False)
    child = spawn.Process(target=_child, args=(send, os.getpid(), function, args))
    child.start()
    send.close()
    try:
        ok, value = receive.recv()
    except EOFError:
        raise RuntimeError(f"the measurement process died (exit code {child.exitcode})") from None
    finally:
        receive.close()
        _end(child)
    if not ok:
        raise value
    return value


def _child(send: Any, parent: int, function: Any, args: tuple) -> None:
    with stops_within_seconds(owner=parent):
        try:
            result = (True, function(*args))
        except (ConfigError, DatasetError) as e:
            result = (False, e)
        except Exception as e:  # as one line: the exception may not survive pickling
            result = (False, RuntimeError(first_line(e)))
        except KeyboardInterrupt:
            return  # Ctrl-C reached the whole process group: the parent reports it
        send.send(result)


def _end(child: Any) -> None:
    """Wait briefly for `child` to finish; terminate it, then kill it, if it does not."""
    child.join(timeout=1)
    if child.is_alive():
        child.terminate()
        child.join(timeout=GRACE_SECONDS + 1)
    if child.is_alive():
        child.kill()
        child.join()


def _measure_job(
    kind: str, overrides: list[str], warmup: int, steps: int, workers: int, profile_top: int = 0
):
    cfg = load_config(overrides)
    device = resolve_device(cfg.device.name)
    if kind == "bnstudy":
        row = measure_bnstudy(cfg, device, identity(resolved(cfg)), warmup, steps, profile_top)
    else:
        row = measure_reference(cfg, device, warmup, steps, workers)
    return {
        "device": str(device),
        "model": cfg.model.name,
        "width": cfg.model.width,
        "norm": cfg.norm.name,
        "batch_size": cfg.batch_size,
        # On the CPU: which kernels computed (kernels.py), as this process runs them.
        "cpu_kernels": f"{cfg.trainer.cpu_kernels} ({kernels.current().isa})"
        if device.type == "cpu"
        else "",
        **row,
    }


def flops_per_image(model_name: str, cfg: DictConfig) -> float:
    """Forward FLOPs of one image through `model_name` at the configured width."""
    from torch.utils.flop_counter import FlopCounterMode

    spec = DATASETS[cfg.dataset.name]
    model = build_model(cfg, model_name)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, spec.channels, spec.size, spec.size))
    return float(counter.get_total_flops())


# The grids whose cost the benchmark estimates (conf/experiment/<name>.yaml).
ESTIMATED_GRIDS = ("paper", "lr_search", "paper_tuned")


def grid_of(experiment: str, overrides: list[str]) -> tuple[dict[str, list[str]], DictConfig]:
    """The swept values of conf/experiment/<experiment>.yaml (as narrowed by `overrides`)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", [*overrides, f"experiment={experiment}"], return_hydra_config=True)
    params = {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}
    return params, cfg


def _hours(hours: float) -> str:
    # Two significant figures below 0.1 h, so that a tiny grid never reads as 0.0 h.
    return f"{hours:,.1f}" if hours >= 0.1 else f"{hours:.2g}"


def estimate_grid_hours(
    measured: dict[str, Any], overrides: list[str], n_train: int, experiment: str = "paper"
) -> str:
    """Hours for an experiment's grid at the measured throughput, scaled by each model's
    FLOPs, with `n_train` training images per epoch."""
    params, cfg = grid_of(experiment, overrides)
    models = params.pop("model")
    others = math.prod(len(values) for values in params.values())
    base = flops_per_image(measured["model"], cfg)
    epochs = cfg.trainer.epochs
    seconds = others * sum(
        epochs * n_train / (measured["images_per_s"] * base / flops_per_image(model, cfg))
        for model in models
    )
    dims = " × ".join(f"{len(v)} {k}" for k, v in {"model": models, **params}.items())
    return (
        f"{experiment} grid estimate: {len(models) * others} runs ({dims}) × {epochs} epochs × "
        f"{n_train:,} images ≈ {_hours(seconds / 3600)} h on this device at "
        f"{measured['batch_size']}-image batches (throughput scaled by each model's FLOPs; "
        "small batch sizes run slower than this)"
    )


def format_table(rows: list[dict[str, Any]]) -> str:
    shown = ("path", "model", "norm", "batch_size", "precision", "channels_last",
             "cpu_kernels", "images_per_s", "ms_per_step", "peak_memory_mb",
             "vs_reference")  # fmt: skip
    cells = [[str(c) for c in shown]]
    for row in rows:
        cells.append([
            f"{row[c]:,.1f}" if isinstance(row[c], float) else str(row[c]) for c in shown
        ])  # fmt: skip
    widths = [max(len(r[i]) for r in cells) for i in range(len(shown))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bnstudy.bench",
        description="Training speed of bnstudy vs a plain PyTorch loop. Other arguments are "
        "bnstudy.run overrides (model=resnet50 batch_size=16 device=cpu ...).",
    )
    parser.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    parser.add_argument("--workers", type=int, default=2, help="reference DataLoader workers")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference loop")
    parser.add_argument("--variants", action="store_true", help="time all four norm variants")
    parser.add_argument(
        "--kernels",
        action="store_true",
        help="on the CPU, time bnstudy with the portable (AVX2) and the native kernels",
    )
    parser.add_argument("--out", type=Path, help="CSV file (default outputs/bench/...csv)")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help=f"list the N kernels (CUDA) or operators (CPU) with the most time over up to "
        f"{PROFILE_STEPS} more steps of the first config (torch.profiler); also written to "
        "<out>-profile.csv",
    )
    args, overrides = parser.parse_known_args(argv)
    try:
        cfg = load_config(overrides)
    except Exception as e:  # Hydra and OmegaConf errors, and our ConfigError
        print(f"bnstudy.bench: error: {one_line(e)}", file=sys.stderr)
        return 2
    jobs = [("bnstudy", overrides)]
    if args.variants:
        jobs = [("bnstudy", [*overrides, f"norm={n}"]) for n in NORMS]
    if args.kernels:
        jobs = [("bnstudy", [*overrides, f"trainer.cpu_kernels={k}"]) for k in KERNELS]
    if not args.no_reference:
        # The loop a researcher writes runs on the machine's own kernels.
        jobs.append(("reference", [*overrides, "trainer.cpu_kernels=native"]))
    rows = []
    try:
        for i, (kind, job_overrides) in enumerate(jobs):
            profile_top = args.profile if i == 0 else 0
            rows.append(
                _in_fresh_process(
                    _measure_job,
                    kind,
                    job_overrides,
                    args.warmup,
                    args.steps,
                    args.workers,
                    profile_top,
                )
            )
    except (ConfigError, DatasetError) as e:
        print(f"bnstudy.bench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bnstudy.bench: interrupted; nothing written", file=sys.stderr)
        return EXIT_INTERRUPTED
    reference = next((r for r in rows if r["path"] == "reference"), None)
    for row in rows:
        row["vs_reference"] = (
            round(row["images_per_s"] / reference["images_per_s"], 2) if reference else ""
        )
    print(format_table(rows))
    if args.variants:
        times = [r["ms_per_step"] for r in rows if r["path"] == "bnstudy"]
        print(f"variants: slowest/fastest step time = {max(times) / min(times):.3f}")
    if args.kernels:
        portable, native = rows[:2]
        ratio = portable["images_per_s"] / native["images_per_s"]
        print(
            f"cpu kernels: {portable['cpu_kernels']} {portable['images_per_s']:,.1f} images/s, "
            f"{native['cpu_kernels']} {native['images_per_s']:,.1f}: portable runs at "
            f"{ratio:.2f}× native (the price of the same bits on every x86 machine)"
        )
    for row in rows:
        if "diagnostics_ms" in row:
            print(
                f"diagnostics (layers.csv, trainer.diagnostics) for norm={row['norm']}: "
                f"{row['diagnostics_ms']:,.0f} ms per epoch = {row['diagnostics_share']:.2f}% "
                f"of an epoch's training ({row['train_images']:,} images at this throughput)"
            )
    for experiment in ESTIMATED_GRIDS:
        print(estimate_grid_hours(rows[0], overrides, rows[0]["train_images"], experiment))
    out = args.out or Path(cfg.paths.output_root) / "bench" / (
        f"{rows[0]['device']}-{cfg.model.name}-w{cfg.model.width}-bs{cfg.batch_size}.csv"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(out, COLUMNS, [{c: row.get(c, "") for c in COLUMNS} for row in rows])
    print(f"written: {out}")
    if rows[0].get("profile"):
        report_profile(rows[0], out.with_name(f"{out.stem}-profile.csv"))
    return 0


def report_profile(row: dict[str, Any], out: Path) -> None:
    """Print the profile of `row`'s config and write it to `out` (PROFILE_COLUMNS)."""
    profile = row["profile"]
    if "error" in profile:
        print(f"profile of norm={row['norm']}: torch.profiler failed: {profile['error']}")
        return
    what = "kernels kept the GPU" if row["device"].startswith("cuda") else "operators kept the CPU"
    print(
        f"profile of norm={row['norm']} (torch.profiler, {profile['steps']} steps after the "
        f"timed ones): {what} busy {profile['busy_pct']:.1f}% of {profile['wall_ms']:,.1f} ms"
    )
    print(f"{'share %':>8}  {'total ms':>9}  {'calls':>6}  kernel")
    for k in profile["kernels"]:
        name = k["kernel"] if len(k["kernel"]) <= 100 else k["kernel"][:97] + "..."
        print(f"{k['share_pct']:8.1f}  {k['total_ms']:9.2f}  {k['calls']:6d}  {name}")
    shared = {c: profile[c] for c in ("busy_pct", "wall_ms", "steps")}
    write_csv(out, PROFILE_COLUMNS, [{**k, **shared} for k in profile["kernels"]])
    print(f"written: {out}")


if __name__ == "__main__":
    # The imported module's copy, so spawned measurement processes find `_measure_job`.
    from bnstudy.bench import main as imported_main

    sys.exit(imported_main())
