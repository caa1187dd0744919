"""Evaluate a finished run's saved model again: `python -m bnstudy.evaluate RUN_DIR`.

Rebuilds the run's exact config from its summary.csv (the identity heads it: every key that
changes a result), loads model.pt, evaluates it on the test set in eval mode, overall and per
class, and checks the accuracy against the summary's final_test_acc. Further arguments are
overrides for where it runs (device=cpu, dataset.root=DIR). Exit status: 0 when the numbers
agree, 1 when they do not, 2 on a user error.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from bnstudy.config.preflight import resolved
from bnstudy.config.schema import CONF_DIR, resolve_device
from bnstudy.data.datasets import DATASETS, load_dataset
from bnstudy.data.loader import GpuLoader
from bnstudy.errors import USER_ERRORS, one_line
from bnstudy.records import MODEL_FILE, SUMMARY_COLUMNS, RecordsError, RunFolder, identity
from bnstudy.study.init import fold_norms
from bnstudy.training import kernels
from bnstudy.training.accel import apply_global_flags, fast_paths
from bnstudy.training.loop import autocast
from bnstudy.training.parts import build_model

PROG = "bnstudy.evaluate"
GROUPS = ("model", "norm", "dataset", "optim")  # chosen by name in the identity
CPU_ONLY_KEYS = ("trainer.cpu_kernels", "trainer.cpu_threads")  # empty for a GPU run


def run_config(folder: RunFolder, overrides: list[str]):
    """The run's config: the groups its identity names, every identity value on top, and
    `overrides` for where it runs. Refused unless it hashes to the run's own run_id."""
    summary = folder.read_summary()
    if summary is None:
        raise RecordsError(f"{folder.summary_path}: not found; give the folder of one run")
    ident = {k: v for k, v in summary.items() if k not in SUMMARY_COLUMNS and k != "run_id"}
    choices = [f"{group}={ident[f'{group}.name']}" for group in GROUPS]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*choices, *overrides])
    trained_on = summary["device"].split()[0]  # "cpu", "cuda (NVIDIA H200)", …
    with open_dict(cfg):
        for key, text in ident.items():
            if text == "" and key in CPU_ONLY_KEYS:
                continue  # not a CPU run: no kernels or threads of its own; defaults here
            OmegaConf.update(cfg, key, text if text != "" else None, merge=False)
    recomputed = identity(resolved(cfg, trained_on))["run_id"]
    if recomputed != summary["run_id"]:
        raise RecordsError(
            f"{folder.summary_path}: its identity gives run {recomputed}, not "
            f"{summary['run_id']} (written by another bnstudy version, or edited); "
            "rerun its config"
        )
    return cfg, summary


@torch.no_grad()
def predictions(model: torch.nn.Module, loader: GpuLoader, dtype: Any) -> tuple:
    """(labels, predicted classes) over `loader`, in eval mode."""
    model.eval()
    labels, predicted = [], []
    for x, y in loader:
        with autocast(x.device.type, dtype):
            predicted.append(model(x).argmax(1))
        labels.append(y)
    return torch.cat(labels).cpu(), torch.cat(predicted).cpu()


def evaluate_run(run_dir: Path, overrides: list[str]) -> tuple[str, bool]:
    """The report of `run_dir`'s model on the test set, and whether it agrees with the run."""
    folder = RunFolder(run_dir)
    cfg, summary = run_config(folder, overrides)
    weights = run_dir / MODEL_FILE
    if not weights.is_file():
        raise RecordsError(
            f"{weights}: not found; the run's status is {summary['status']!r} and only a "
            "completed run keeps its model"
        )
    device = resolve_device(cfg.device.name)
    if device.type == "cpu":  # the kernels the run trained with, where it trained on the CPU
        kernels.choose(cfg.trainer.cpu_kernels, cfg.trainer.cpu_threads)
    fast = fast_paths(cfg, device)
    # As the run computed: on CUDA an fp32 run's convolutions ran without TF32, and PyTorch's
    # default (TF32 on for cuDNN) would round them otherwise.
    apply_global_flags(fast, device)
    model = build_model(cfg).to(device)
    if cfg.norm.freeze_after is not None:
        fold_norms(model, cfg.norm.fold_into)  # the saved model was folded during training
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(weights, map_location=device, weights_only=True)
        model.load_state_dict(state)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RecordsError(f"{weights}: does not fit the run's model ({first})") from None
    _, test = load_dataset(
        cfg.dataset.name, cfg.dataset.root, cfg.dataset.download, None, cfg.data.test_subset
    )
    spec = DATASETS[cfg.dataset.name]
    model = model.to(memory_format=fast.memory_format)
    loader = GpuLoader(
        test, spec, cfg.data.eval_batch_size, device, train=False, memory_format=fast.memory_format
    )
    labels, predicted = predictions(model, loader, fast.autocast_dtype)
    hits = predicted == labels
    accuracy = 100.0 * hits.float().mean().item()
    recorded = float(summary["final_test_acc"])
    # Equal up to half an image: the records keep the accuracy as a float.
    agrees = abs(accuracy - recorded) < 50.0 / len(labels)
    lines = [
        f"run {summary['run_id']}: {run_dir}",
        f"evaluated {len(labels):,} test images of {cfg.dataset.name} on {device.type} in "
        f"{fast.precision} (trained on {summary['device']})",
        f"test accuracy {accuracy:.2f}% (summary.csv: {recorded:.2f}%): "
        + ("agrees" if agrees else f"DIFFERS by {accuracy - recorded:+.2f} points"),
        "",
        "class  images  correct  accuracy %",
    ]
    for c in range(spec.classes):
        mine = labels == c
        n, right = int(mine.sum()), int(hits[mine].sum())
        share = f"{100.0 * right / n:.2f}" if n else "n/a"
        lines.append(f"{c:>5}  {n:>6}  {right:>7}  {share:>10}")
    if not agrees:
        lines.append(
            "the difference comes from another device, precision or CPU kernel than the run "
            "used (docs/data.md: the same numbers on every machine), or from a changed model.pt"
        )
    return "\n".join(lines), agrees


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {PROG}",
        description="Evaluate a finished run's model.pt on the test set and check it against "
        "its summary.csv. Other arguments are overrides of where it runs (device=cpu, "
        "dataset.root=DIR).",
    )
    parser.add_argument("run_dir", type=Path, help="the folder of one completed run")
    args, overrides = parser.parse_known_args(argv)
    try:
        report, agrees = evaluate_run(args.run_dir, overrides)
    except USER_ERRORS as e:
        print(f"{PROG}: error: {one_line(e)}", file=sys.stderr)
        return 2
    print(report)
    return 0 if agrees else 1


if __name__ == "__main__":
    sys.exit(main())
