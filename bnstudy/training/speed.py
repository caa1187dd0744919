"""Throughput measurements for `python -m bnstudy.bench`: bnstudy's training step and a
torchvision + DataLoader reference loop, each timed in a fresh process (images/s, ms/step,
peak memory), and the profiler's top kernels.
"""

from __future__ import annotations

import resource
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from bnstudy.data.datasets import DATASETS
from bnstudy.data.loader import GpuLoader
from bnstudy.errors import first_line
from bnstudy.records import RunFolder
from bnstudy.training.diagnostics import layer_stats, probe_of
from bnstudy.training.loop import train_step
from bnstudy.training.parts import build_model, build_optimizer, build_parts

# Steps that torch.profiler records after the timed ones (at most --steps): a steady state,
# and a short trace.
PROFILE_STEPS = 10


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step: Any, device: torch.device, warmup: int, steps: int) -> float:
    """Seconds per step over `steps` steps, after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    _sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - started) / steps


def _endless(loader: GpuLoader) -> Iterator[Any]:
    """The loader's batches epoch after epoch, each epoch a new permutation (itertools.cycle
    would keep every batch of the first epoch on the device, inflating the peak memory)."""
    while True:
        yield from loader


def measure_bnstudy(
    cfg: DictConfig,
    device: torch.device,
    ident: dict[str, Any],
    warmup: int,
    steps: int,
    profile_top: int = 0,
) -> dict[str, Any]:
    """bnstudy's training path for the run `ident` on `device`: on-device loader, fast paths,
    `train_step`; with `profile_top`, the top kernels of a few more steps (`top_kernels`)."""
    parts = build_parts(cfg, device)
    parts.train_model.train()
    batches = _endless(parts.train_loader)

    def step() -> None:
        x, y = next(batches)
        train_step(
            parts.train_model, x, y, parts.optimizer, parts.fast.autocast_dtype, parts.scaler
        )

    seconds = _timed(step, device, warmup, steps)
    profile = None
    if profile_top:
        profile = top_kernels(step, device, min(PROFILE_STEPS, steps), profile_top)
    # What trainer.diagnostics adds to each epoch: one layers.csv record, on the gradients
    # the last step left, computed and appended to the file as a run does.
    probe, _ = probe_of(parts, cfg)
    with tempfile.TemporaryDirectory() as scratch:
        folder = RunFolder(Path(scratch))

        def record() -> None:
            folder.append_layers(ident, layer_stats(parts.model, probe, epoch=1))

        record_seconds = _timed(record, device, 1, 3)
    epoch_seconds = seconds * len(parts.train_loader)
    return {
        "path": "bnstudy",
        "diagnostics_ms": 1000 * record_seconds,
        "diagnostics_share": 100 * record_seconds / epoch_seconds,
        "precision": parts.fast.precision,
        "channels_last": parts.fast.channels_last,
        "compile": parts.fast.compile,
        "images_per_s": cfg.batch_size / seconds,
        "ms_per_step": 1000 * seconds,
        "peak_memory_mb": _peak_memory_mb(device),
        "train_images": len(parts.train_loader.images),
        "profile": profile,
    }


def top_kernels(step: Callable[[], None], device: torch.device, steps: int, top: int) -> dict:
    """The `top` kernels (CUDA) or operators (CPU) by their own time over `steps` calls of
    `step`, and the share of the wall time they kept the device busy: a GPU that is busy
    half the time waits on the CPU (launches, Python), not on its kernels."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    on_gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    try:
        _sync(device)
        with profile(activities=activities) as prof:
            started = time.perf_counter()
            for _ in range(steps):
                step()
            _sync(device)
            wall_us = (time.perf_counter() - started) * 1e6
        if on_gpu:  # kernels, copies and memsets, timed on the GPU
            timed = [(e, e.self_device_time_total) for e in prof.key_averages()]
            timed = [(e, t) for e, t in timed if e.device_type == DeviceType.CUDA and t > 0]
        else:
            timed = [(e, e.self_cpu_time_total) for e in prof.key_averages()]
            timed = [(e, t) for e, t in timed if t > 0]
    except Exception as e:  # a profiler that fails must not lose the measurement before it
        return {"error": first_line(e)}
    total = sum(t for _, t in timed) or 1.0
    timed.sort(key=lambda pair: -pair[1])
    kernels = [
        {"kernel": e.key, "calls": e.count, "total_ms": t / 1000, "share_pct": 100 * t / total}
        for e, t in timed[:top]
    ]
    return {
        "steps": steps,
        "wall_ms": wall_us / 1000,
        "busy_pct": 100 * total / wall_us,
        "kernels": kernels,
    }


def _torchvision_dataset(cfg: DictConfig, scratch: Path) -> torch.utils.data.Dataset:
    """The dataset as torchvision reads it, with the usual per-image transforms."""
    from torchvision import transforms as T

    spec = DATASETS[cfg.dataset.name]
    transform = T.Compose(
        [
            T.RandomCrop(spec.size, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(spec.mean, spec.std),
        ]
    )
    dataset = spec.torchvision(Path(cfg.dataset.root).expanduser(), scratch, transform)
    if cfg.data.train_subset is not None:
        dataset = torch.utils.data.Subset(dataset, range(cfg.data.train_subset))
    return dataset


def measure_reference(
    cfg: DictConfig, device: torch.device, warmup: int, steps: int, workers: int
) -> dict[str, Any]:
    """The hand-written loop: torchvision dataset + transforms + DataLoader + model + SGD."""
    with tempfile.TemporaryDirectory() as staging:
        dataset = _torchvision_dataset(cfg, Path(staging))
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=cfg.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
        )
        torch.manual_seed(cfg.seed)
        model = build_model(cfg).to(device).train()
        optimizer = build_optimizer(cfg, model)
        criterion = nn.CrossEntropyLoss()
        batches = iter(())
        running_loss = 0.0

        def step() -> None:
            nonlocal batches, running_loss
            try:
                x, y = next(batches)
            except StopIteration:
                batches = iter(loader)
                x, y = next(batches)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = criterion(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running_loss += loss.item()  # what such loops do for their progress print

        seconds = _timed(step, device, warmup, steps)
        return {
            "path": "reference",
            "precision": "fp32",
            "channels_last": False,
            "compile": "none",
            "images_per_s": cfg.batch_size / seconds,
            "ms_per_step": 1000 * seconds,
            "peak_memory_mb": _peak_memory_mb(device),
        }
