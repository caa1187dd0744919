"""Starting points and mid-run changes that separate initialization from normalization:
data-dependent init of AffineLayers, LSUV, freezing (folding) BatchNorm after K epochs (with
its statistics, its parametrization and its optimizer state), and training only the
normalization parameters. See bnstudy/study/controls.py for the keys."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bnstudy.data.datasets import DatasetSpec, Split
from bnstudy.data.loader import GpuLoader
from bnstudy.study.norms import AffineLayer, FrozenNorm


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


@dataclass(frozen=True)
class Fold:
    """One BatchNorm layer's fold: its γ and β after the fold (None where it has none), the
    statistics folded in, and whether γ and β are the layer's own (False: BN-minus's fresh
    ones). The fold's linear map is γ' = γ·s, β' = β − γ·μ·s with s = 1/√(σ²+ε)."""

    gamma: nn.Parameter | None
    beta: nn.Parameter | None
    mean: Tensor
    inv_std: Tensor  # s
    carried: bool = True

    @property
    def new_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimizer has not seen (BN-minus folded into an AffineLayer)."""
        return [] if self.carried else [p for p in (self.gamma, self.beta) if p is not None]


Statistics = dict[str, tuple[Tensor, Tensor]]  # per BatchNorm layer name: (mean, variance)


@torch.no_grad()
def population_statistics(
    model: nn.Module, batches: Iterable[Tensor], autocast_dtype: torch.dtype | None = None
) -> Statistics:
    """Per BatchNorm layer, the mean and (biased) variance of its input over every image of
    `batches`, in training mode as the steps computed them (each earlier layer normalizing
    by its batch's statistics): the population statistics of "precise BN" (Wu & Johnson
    2021), summed in float64. Leaves the model as it was (state_kept): nothing is updated."""
    norms = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    sums: dict[str, list] = {n: [0, 0.0, 0.0] for n in norms}  # count, Σx, Σx²

    def add(name: str):
        def hook(module: nn.Module, inputs: tuple[Tensor]) -> None:
            h = inputs[0].double()
            entry = sums[name]
            entry[0] += h.numel() // h.shape[1]
            entry[1] = entry[1] + h.sum(dim=(0, 2, 3))
            entry[2] = entry[2] + (h * h).sum(dim=(0, 2, 3))

        return hook

    handles = [m.register_forward_pre_hook(add(n)) for n, m in norms.items()]
    try:
        with state_kept(model):
            model.train()
            for x in batches:
                with torch.autocast(x.device.type, autocast_dtype, enabled=bool(autocast_dtype)):
                    model(x)
    finally:
        for handle in handles:
            handle.remove()
    stats = {}
    for name, (count, total, squares) in sums.items():
        if not count:
            raise ValueError("population_statistics needs at least one batch")
        mean = total / count
        var = (squares / count - mean * mean).clamp_min(0)
        dtype = norms[name].running_mean.dtype
        stats[name] = (mean.to(dtype), var.to(dtype))
    return stats


@torch.no_grad()
def fold_norms(
    model: nn.Module, into: str = "frozen_norm", stats: Statistics | None = None
) -> list[Fold]:
    """Replace every BatchNorm layer by what it computes in eval mode with the statistics
    `stats` (per layer name; its running statistics where None):

    - into="frozen_norm": a FrozenNorm, γ·(x−μ)/√(σ²+ε) + β with μ, σ² fixed. γ and β stay
      the same Parameters with the same values, so their optimizer state, weight decay and
      step size mean what they meant before the fold.
    - into="affine": the AffineLayer γ'·x + β' with γ' = γ/√(σ²+ε), β' = β − γ·μ/√(σ²+ε)
      (BN-minus counts as γ=1, β=0 and gets fresh Parameters); γ and β stay the same
      Parameter objects, now holding γ' and β' (carry_state maps their optimizer state).

    Returns each layer's Fold, in network order."""
    folds: list[Fold] = []
    for name, norm in list(model.named_modules()):
        if not isinstance(norm, nn.BatchNorm2d):
            continue
        mean, var = stats[name] if stats is not None else (norm.running_mean, norm.running_var)
        inv_std = torch.rsqrt(var + norm.eps)
        if into == "frozen_norm":
            folded: nn.Module = FrozenNorm(norm, mean, var)
            gamma, beta = norm.weight, norm.bias
        else:
            folded = AffineLayer(norm.num_features).to(mean.device)
            if norm.weight is None:  # BN-minus: γ=1, β=0, fresh parameters
                gamma, beta = folded.weight, folded.bias
            else:
                gamma, beta = norm.weight, norm.bias
            beta.copy_(beta - gamma * mean * inv_std)
            gamma.copy_(gamma * inv_std)
            folded.weight, folded.bias = gamma, beta
        folds.append(Fold(gamma, beta, mean, inv_std, carried=norm.weight is not None))
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, folded)
    return folds


# How each optimizer's per-parameter state moves through the fold's linear map: SGD's
# momentum buffer and Adam's first moment, accumulated steps, map as steps do (linearly),
# Adam's second moment, a mean of squares, with the squared coefficients (the cross moment of
# γ's and β's gradients, which Adam does not keep, taken as 0). "step" stays as it is.
LINEAR_STATE = ("momentum_buffer", "exp_avg")


SQUARED_STATE = ("exp_avg_sq",)


@torch.no_grad()
def carry_state(optimizer: torch.optim.Optimizer, folds: list[Fold], into: str, how: str) -> None:
    """γ/β optimizer state at the fold (norm.fold_momentum): "map" carries it through the
    fold's map, buf_γ' = buf_γ·s, buf_β' = buf_β − buf_γ·μ·s (into="affine"; frozen_norm keeps
    the parametrization, so its map is the identity); "reset" drops it, as if γ and β had
    never stepped."""
    for fold in folds:
        if fold.gamma is None or not fold.carried:
            continue
        if how == "reset":
            optimizer.state.pop(fold.gamma, None)
            optimizer.state.pop(fold.beta, None)
            continue
        if into == "frozen_norm":
            continue
        g_state, b_state = optimizer.state.get(fold.gamma, {}), optimizer.state.get(fold.beta, {})
        shift = fold.mean * fold.inv_std  # μ·s
        for key in LINEAR_STATE:
            if _tensor(g_state, key) and _tensor(b_state, key):
                b_state[key].sub_(g_state[key] * shift)
                g_state[key].mul_(fold.inv_std)
        for key in SQUARED_STATE:
            if _tensor(g_state, key) and _tensor(b_state, key):
                b_state[key].add_(g_state[key] * shift**2)
                g_state[key].mul_(fold.inv_std**2)


def _tensor(state: dict, key: str) -> bool:
    return isinstance(state.get(key), Tensor)
