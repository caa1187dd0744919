"""The normalization variants of the study, and one factory from the `norm` config.

| variant   | forward in training            | learnable              | statistics               |
| batchnorm | γ·(x−μ_B)/√(σ²_B+ε) + β        | γ=1, β=0 (init)        | running mean/var in eval |
| affine    | γ·x + β                        | γ=1, β=0 (init)        | none; same in eval       |
| bnminus   | (x−μ_B)/√(σ²_B+ε)              | none                   | running mean/var in eval |
| none      | x                              | none                   | none                     |
| groupnorm | γ·(x−μ_G)/√(σ²_G+ε) + β        | γ=1, β=0 (init)        | per image and group      |

`norm.params=scale|shift` keeps only γ or only β of the kinds that have both. GroupNorm's
`norm.groups` is its group count at the standard width 64, scaled with `model.width`.
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


STANDARD_WIDTH = 64  # model.width of the standard ResNets, where norm.groups is Wu & He's 32


MIN_GROUP_CHANNELS = 2  # one channel per group would be InstanceNorm, another variant


def scaled_groups(groups: int, width: int) -> int:
    """norm.groups (the group count at width 64) scaled with model.width: the same channels
    per group as the standard network at every width (32 groups at width 64, 4 at width 8)."""
    return max(1, groups * width // STANDARD_WIDTH)


def fitted_groups(channels: int, groups: int) -> int:
    """The groups a layer of `channels` uses: the largest divisor of `channels` that is at
    most `groups` and leaves at least MIN_GROUP_CHANNELS channels in each group."""
    most = min(groups, max(1, channels // MIN_GROUP_CHANNELS))
    return max(g for g in range(1, most + 1) if channels % g == 0)


class GroupNorm(nn.GroupNorm):
    """GroupNorm (Wu & He 2018): statistics per image over groups of channels, so nothing
    depends on the batch. `groups` is the most this layer may use (fitted_groups)."""

    def __init__(
        self, num_features: int, eps: float = 1e-5, groups: int = 32, params: str = "both"
    ) -> None:
        super().__init__(fitted_groups(num_features, groups), num_features, eps=eps)
        _scale_and_shift(self, num_features, params)


class NoNorm(nn.Identity):
    """No normalization layer at all: x. A class of its own, so that it is not mistaken for
    the identity shortcuts of the residual blocks."""

    def __init__(self, num_features: int) -> None:
        super().__init__()


class FrozenNorm(nn.Module):
    """A BatchNorm layer after the fold (norm.fold_into=frozen_norm): γ·(x−μ)/√(σ²+ε) + β
    with fixed μ and σ², in training as in eval. γ and β are the BatchNorm's own Parameters
    (none for BN-minus), so training goes on in the parametrization it began in."""

    def __init__(self, norm: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor) -> None:
        super().__init__()
        self.num_features, self.eps = norm.num_features, norm.eps
        self.register_parameter("weight", norm.weight)
        self.register_parameter("bias", norm.bias)
        # The BatchNorm's names, so a checkpoint reads like the layer it replaced.
        self.register_buffer("running_mean", mean.detach().clone())
        self.register_buffer("running_var", var.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # BatchNorm's inference kernel: fixed statistics, γ and β learned, fused backward.
        return nn.functional.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            training=False,
            eps=self.eps,
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, frozen statistics"


@dataclass(frozen=True)
class NormVariant:
    layer: type[nn.Module]  # built as layer(channels, **the norm.* keys it takes)
    takes: tuple[str, ...] = ()  # which of eps, momentum, params, groups it takes
    # Whether the layer divides by statistics of its input in training: a network without
    # such layers can exceed fp16's range (its activations grow with depth).
    normalizes: bool = True


# The one table of variants: conf/norm/<name>.yaml offers each, and everything else (the
# factory, validation, parameter counts, weight decay on γ and β, the docs) reads it here.
NORMS: dict[str, NormVariant] = {
    "batchnorm": NormVariant(BatchNorm, ("eps", "momentum", "params")),
    "affine": NormVariant(AffineLayer, ("params",), normalizes=False),
    "bnminus": NormVariant(BatchNormMinus, ("eps", "momentum")),
    "none": NormVariant(NoNorm, normalizes=False),
    "groupnorm": NormVariant(GroupNorm, ("eps", "groups", "params")),
}


NORM_LAYER_TYPES = (*(v.layer for v in NORMS.values()), FrozenNorm)


def trains_unnormalized(name: str, freeze_after: int | None) -> bool:
    """Whether some training step of the variant normalizes nothing: `none` and `affine`
    (whatever their start, norm.init=data too: it sets γ and β once, on one batch), and
    any variant folded after an epoch (norm.freeze_after)."""
    return not NORMS[name].normalizes or freeze_after is not None


def make_norm(
    name: str,
    eps: float = 1e-5,
    momentum: float = 0.1,
    params: str = "both",
    groups: int = 32,
    width: int = STANDARD_WIDTH,
) -> NormFactory:
    """Return `channels -> layer` for the named variant, with the norm.* keys it takes;
    groupnorm's `groups` is scaled from the standard width to `width` (model.width)."""
    variant = NORMS[name]
    given = {
        "eps": eps,
        "momentum": momentum,
        "params": params,
        "groups": scaled_groups(groups, width),
    }
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


def group_counts(model: nn.Module) -> str:
    """`channels:groups` of every GroupNorm width in the model, e.g. `8:4 16:4 32:4 64:4`
    (summary.csv's norm_groups; empty without GroupNorm)."""
    pairs = {(m.num_channels, m.num_groups) for m in model.modules() if isinstance(m, GroupNorm)}
    return " ".join(f"{c}:{g}" for c, g in sorted(pairs))
