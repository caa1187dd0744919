"""What the network's parameters and signals do, layer by layer (layers.csv, bnstudy.inspect).

Per norm layer with parameters: statistics of γ and β, and the fraction of channels whose |γ|
is below SMALL_GAMMA (Frankle et al. 2021 found that BatchNorm switches off about a third of
the features this way). Per site of the network (the stem, every residual block, the
classifier): mean and std of its output on a fixed probe batch, and the norm of the gradient
of its weights (the convs; the classifier's weight) as the last backward pass left it.

The probe is a forward pass with batch statistics (training mode, what a training step
computes) that changes nothing: running statistics and the mode are restored afterwards. In
eval mode an untrained BatchNorm would use running statistics that have seen no data (mean 0,
variance 1) and look exactly like AffineLayer at init.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from bnstudy.data.datasets import DATASETS, Split
from bnstudy.records import SMALL_GAMMA, LayerStats
from bnstudy.study.init import init_batch, state_kept
from bnstudy.study.norms import NORM_LAYER_TYPES
from bnstudy.training.parts import Parts

PROBE_IMAGES = 256


@dataclass(frozen=True)
class _Site:
    name: str
    kind: str
    stage: int
    depth: int
    module: nn.Module


def _sites(model: nn.Module) -> list[_Site]:
    """The stem, each residual block and the classifier of a bnstudy ResNet, in order."""
    sites = [_Site("stem", "stem", 0, 0, model.stem)]
    depth = 0
    for i, stage in enumerate(model.stages):
        for j, block in enumerate(stage):
            depth += 1
            sites.append(_Site(f"stages.{i}.{j}", "block", i + 1, depth, block))
    sites.append(_Site("fc", "logits", len(model.stages) + 1, depth + 1, model.fc))
    return sites


def probe_of(parts: Parts, cfg: DictConfig) -> tuple[Tensor, Tensor]:
    """The fixed probe batch of a run: PROBE_IMAGES of its training images (and labels),
    chosen by data.split_seed alone, so every run and seed of a study sees the same ones."""
    train = Split(parts.train_loader.images, parts.train_loader.labels)
    spec = DATASETS[cfg.dataset.name]
    return init_batch(train, spec, PROBE_IMAGES, cfg.data.split_seed, parts.device)


def _weights(site: _Site) -> list[nn.Parameter]:
    if site.kind == "logits":
        return [site.module.weight]
    return [m.weight for m in site.module.modules() if isinstance(m, nn.Conv2d)]


def _grad_norm(site: _Site) -> Tensor | None:
    grads = [p.grad for p in _weights(site) if p.grad is not None]
    if not grads:  # before the first step, or weights that do not learn (train_only=norm)
        return None
    return torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads]))


def _norm_rows(site: _Site, epoch: int) -> list[LayerStats]:
    rows = []
    for name, layer in site.module.named_modules():
        if not isinstance(layer, NORM_LAYER_TYPES):
            continue
        gamma, beta = getattr(layer, "weight", None), getattr(layer, "bias", None)
        if gamma is None and beta is None:
            continue
        values: dict[str, Any] = {}
        if gamma is not None:
            g = gamma.detach().float()
            values.update(
                gamma_mean=g.mean(),
                gamma_std=g.std(),
                gamma_min=g.min(),
                gamma_max=g.max(),
                gamma_small=(g.abs() < SMALL_GAMMA).float().mean(),
            )
        if beta is not None:
            b = beta.detach().float()
            values.update(beta_mean=b.mean(), beta_std=b.std())
        channels = (gamma if gamma is not None else beta).numel()
        where = f"{site.name}.{name}" if name else site.name
        rows.append((where, channels, values, getattr(layer, "num_groups", None)))
    return [
        LayerStats(
            epoch, where, "norm", site.stage, site.depth, channels, **_floats(values), groups=groups
        )
        for where, channels, values, groups in rows
    ]


def _floats(values: dict[str, Any]) -> dict[str, float | None]:
    """Tensors to floats in one transfer from the device."""
    keys = [k for k, v in values.items() if v is not None]
    numbers = torch.stack([values[k].float() for k in keys]).tolist() if keys else []
    return {**values, **dict(zip(keys, numbers, strict=True))}


def signals(model: nn.Module, x: Tensor) -> tuple[dict[str, tuple], Tensor]:
    """Each site's output on `x` with batch statistics (in training mode: callers keep the
    model's state with `state_kept`), as (mean, std, output channels) by site name, and the
    logits. Gradients flow unless the caller turned them off."""
    seen: dict[str, tuple] = {}

    def hook(site: _Site):
        def record(module: nn.Module, inputs: Any, out: Tensor) -> None:
            h = out.detach().float()
            seen[site.name] = (h.mean(), h.std(), h.shape[1])

        return record

    handles = [s.module.register_forward_hook(hook(s)) for s in _sites(model)]
    try:
        model.train()
        logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return seen, logits


@torch.no_grad()
def layer_stats(model: nn.Module, x: Tensor, epoch: int) -> list[LayerStats]:
    """layers.csv's rows after `epoch`: γ and β of every norm layer with parameters, and each
    site's output on the probe batch `x` and weight-gradient norm (as the last step left the
    gradients; None before any step)."""
    with state_kept(model):
        seen, _ = signals(model, x)
    return _rows(model, seen, epoch)


def signal_at_init(model: nn.Module, x: Tensor, y: Tensor) -> list[LayerStats]:
    """bnstudy.inspect: the rows of an untrained model, with the gradient norms of one
    backward pass of the cross-entropy on (x, y); the gradients are cleared afterwards."""
    model.zero_grad(set_to_none=True)
    with state_kept(model):  # restored after the backward pass, which reads the buffers
        seen, logits = signals(model, x)
        nn.functional.cross_entropy(logits, y).backward()
    with torch.no_grad():
        rows = _rows(model, seen, epoch=0)
    model.zero_grad(set_to_none=True)
    return rows


def _rows(model: nn.Module, seen: dict[str, tuple], epoch: int) -> list[LayerStats]:
    rows: list[LayerStats] = []
    for site in _sites(model):
        rows += _norm_rows(site, epoch)
        mean, std, channels = seen[site.name]
        values = _floats({"act_mean": mean, "act_std": std, "grad_norm": _grad_norm(site)})
        rows.append(
            LayerStats(epoch, site.name, site.kind, site.stage, site.depth, channels, **values)
        )
    return rows
