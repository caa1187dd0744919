"""The normalization variants of the study, and one factory from the `norm` config.

| variant   | forward in training            | learnable              | statistics               |
| batchnorm | γ·(x−μ_B)/√(σ²_B+ε) + β        | γ=1, β=0 (init)        | running mean/var in eval |
| affine    | γ·x + β                        | γ=1, β=0 (init)        | none; same in eval       |
| bnminus   | (x−μ_B)/√(σ²_B+ε)              | none                   | running mean/var in eval |
| none      | x                              | none                   | none                     |
| groupnorm | γ·(x−μ_G)/√(σ²_G+ε) + β        | γ=1, β=0 (init)        | per image and group      |

`norm.params=scale|shift` keeps only γ or only β of the kinds that have both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

NormFactory = Callable[[int], nn.Module]


def _scale_and_shift(layer: nn.Module, channels: int, params: str) -> None:
    """Give `layer` the learnable γ (ones) and β (zeros) that `params` asks for, None for the
    others: the batch-norm kernels then leave out the scale or the shift."""
    weight = nn.Parameter(torch.ones(channels)) if params in ("both", "scale") else None
    bias = nn.Parameter(torch.zeros(channels)) if params in ("both", "shift") else None
    layer.register_parameter("weight", weight)
    layer.register_parameter("bias", bias)


class AffineLayer(nn.Module):
    """Per-channel scale and shift, γ·x + β, with no statistics: train and eval are the same."""

    def __init__(self, num_features: int, params: str = "both") -> None:
        super().__init__()
        self.num_features = num_features
        _scale_and_shift(self, num_features, params)
        # Constants, never updated and not saved: mean 0 and variance 1 for the kernel below.
        self.register_buffer("_zero", torch.zeros(num_features), persistent=False)
        self.register_buffer("_one", torch.ones(num_features), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # BatchNorm's inference kernel with mean 0, variance 1 and eps 0 computes exactly
        # γ·(x−0)/√1 + β = γ·x + β, fused forward and backward and in the input's dtype under
        # autocast: 2-5× faster than an elementwise multiply-add, which also promotes bf16 to fp32.
        return nn.functional.batch_norm(
            x, self._zero, self._one, self.weight, self.bias, training=False, eps=0.0
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}"


class BatchNorm(nn.BatchNorm2d):
    """PyTorch's BatchNorm2d, with γ and β as `params` asks (both by default)."""

    def __init__(
        self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, params: str = "both"
    ) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        _scale_and_shift(self, num_features, params)


class BatchNormMinus(nn.BatchNorm2d):
    """BatchNorm without γ and β: (x−μ_B)/√(σ²_B+ε); running statistics are used in eval."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, affine=False)


class GroupNorm(nn.GroupNorm):
    """GroupNorm (Wu & He 2018): statistics per image over groups of channels, so nothing
    depends on the batch. The group count is the largest divisor of the channels that is at
    most `groups` (small widths have fewer channels than 32)."""

    def __init__(
        self, num_features: int, eps: float = 1e-5, groups: int = 32, params: str = "both"
    ) -> None:
        fitted = max(g for g in range(1, min(groups, num_features) + 1) if num_features % g == 0)
        super().__init__(fitted, num_features, eps=eps)
        _scale_and_shift(self, num_features, params)


class NoNorm(nn.Identity):
    """No normalization layer at all: x. A class of its own, so that it is not mistaken for
    the identity shortcuts of the residual blocks."""

    def __init__(self, num_features: int) -> None:
        super().__init__()


@dataclass(frozen=True)
class NormVariant:
    layer: type[nn.Module]  # built as layer(channels, **the norm.* keys it takes)
    takes: tuple[str, ...] = ()  # which of eps, momentum, params, groups it takes


# The one table of variants: conf/norm/<name>.yaml offers each, and everything else (the
# factory, validation, parameter counts, weight decay on γ and β, the docs) reads it here.
NORMS: dict[str, NormVariant] = {
    "batchnorm": NormVariant(BatchNorm, ("eps", "momentum", "params")),
    "affine": NormVariant(AffineLayer, ("params",)),
    "bnminus": NormVariant(BatchNormMinus, ("eps", "momentum")),
    "none": NormVariant(NoNorm),
    "groupnorm": NormVariant(GroupNorm, ("eps", "groups", "params")),
}
NORM_LAYER_TYPES = tuple(v.layer for v in NORMS.values())


def make_norm(
    name: str,
    eps: float = 1e-5,
    momentum: float = 0.1,
    params: str = "both",
    groups: int = 32,
) -> NormFactory:
    """Return `channels -> layer` for the named variant, with the norm.* keys it takes."""
    variant = NORMS[name]
    given = {"eps": eps, "momentum": momentum, "params": params, "groups": groups}
    kwargs = {key: given[key] for key in variant.takes}
    return lambda channels: variant.layer(channels, **kwargs)


def norm_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learnable parameters inside normalization layers (γ and β), in network order."""
    return [
        p
        for m in model.modules()
        if isinstance(m, NORM_LAYER_TYPES)
        for p in m.parameters(recurse=False)
    ]


def count_norm_parameters(model: nn.Module) -> int:
    """Number of learnable parameters that sit inside normalization layers."""
    return sum(p.numel() for p in norm_parameters(model))
