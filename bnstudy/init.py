"""Starting points and mid-run changes that separate initialization from normalization:
data-dependent init of AffineLayers, LSUV, freezing (folding) BatchNorm into AffineLayers,
and training only the normalization parameters. See bnstudy/controls.py for the keys."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from bnstudy.data import DatasetSpec, Split
from bnstudy.loader import GpuLoader
from bnstudy.norms import AffineLayer


def init_batch(
    split: Split, spec: DatasetSpec, size: int, seed: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """A fixed batch of `size` training images (fewer if the split is smaller) and their
    labels, chosen by a generator seeded with `seed` alone and normalized like training
    batches (not augmented)."""
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(split.labels), generator=generator)[:size]
    images = Split(split.images[chosen], split.labels[chosen])
    return next(iter(GpuLoader(images, spec, len(chosen), device, train=False)))


@contextmanager
def state_kept(model: nn.Module) -> Iterator[None]:
    """Forward passes inside leave the model as they found it: its train/eval mode and every
    buffer (BatchNorm's running statistics and batch count) are restored on the way out."""
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    training = model.training
    try:
        yield
    finally:
        model.train(training)
        with torch.no_grad():
            for k, v in model.named_buffers():
                if k in buffers:  # a fold inside would have replaced the layer
                    v.copy_(buffers[k])


@torch.no_grad()
def data_init_affine(model: nn.Module, x: Tensor, eps: float) -> None:
    """Set every AffineLayer, in network order, to γ = 1/√(σ²+ε), β = −μ/√(σ²+ε) from the
    per-channel statistics of its own input on `x`, with all earlier layers already set: on
    `x`, the network then computes exactly what BatchNorm's first training step would."""

    def set_from_input(layer: AffineLayer, inputs: tuple[Tensor]) -> None:
        (h,) = inputs
        mean = h.mean(dim=(0, 2, 3))
        var = h.var(dim=(0, 2, 3), unbiased=False)  # BatchNorm normalizes by the biased one
        inv_std = torch.rsqrt(var + eps)
        layer.weight.copy_(inv_std)
        layer.bias.copy_(-mean * inv_std)

    layers = [m for m in model.modules() if isinstance(m, AffineLayer)]
    handles = [layer.register_forward_pre_hook(set_from_input) for layer in layers]
    try:
        model(x)  # each hook sets its layer just before the layer computes
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def lsuv(model: nn.Module, x: Tensor) -> None:
    """LSUV (Mishkin & Matas 2016) on the current weights: each conv, in network order, scaled
    so that its output has unit variance on `x`. A conv without bias is linear, so scaling its
    output in the same pass is exactly what the rescaled weight computes."""

    def rescale(conv: nn.Conv2d, inputs: tuple[Tensor], out: Tensor) -> Tensor:
        std = out.std()
        conv.weight.div_(std)
        return out / std

    handles = [m.register_forward_hook(rescale) for m in model.modules() if _is_conv(m)]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()


def _is_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.bias is None


def freeze_convs(model: nn.Module) -> None:
    """trainer.train_only=norm: every conv keeps its random init (Frankle et al. 2021)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            module.weight.requires_grad_(False)


@torch.no_grad()
def fold_norms(model: nn.Module) -> list[nn.Parameter]:
    """Replace every BatchNorm layer by the AffineLayer that computes what it computes in eval
    mode: γ' = γ/√(var+ε), β' = β − γ·mean/√(var+ε) from its running statistics (BN-minus
    counts as γ=1, β=0). γ and β stay the same Parameter objects, so an optimizer keeps their
    state; returns the Parameters that are new (BN-minus's), for the optimizer to take on."""
    new: list[nn.Parameter] = []
    for name, norm in list(model.named_modules()):
        if not isinstance(norm, nn.BatchNorm2d):
            continue
        channels = norm.num_features
        inv_std = torch.rsqrt(norm.running_var + norm.eps)
        folded = AffineLayer(channels).to(norm.running_mean.device)
        if norm.weight is None:  # BN-minus: γ=1, β=0, fresh parameters
            gamma, beta = folded.weight, folded.bias
            new += [gamma, beta]
        else:
            gamma, beta = norm.weight, norm.bias
        beta.copy_(beta - gamma * norm.running_mean * inv_std)
        gamma.copy_(gamma * inv_std)
        folded.weight, folded.bias = gamma, beta
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, folded)
    return new
