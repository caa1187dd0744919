"""ResNet18/34/50/101 for small images: a 3×3 stride-1 stem and no max-pool.

The normalization layer is passed in (a `channels -> module` factory), so the four variants
share one model definition. At width 64 with BatchNorm the parameter counts equal
torchvision's resnetN with its 7×7 stem replaced by a 3×3 conv.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bnstudy.study.norms import NormFactory


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


def _shortcut(cin: int, cout: int, stride: int, norm: NormFactory) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(_conv1x1(cin, cout, stride), norm(cout))


class _Residual(nn.Module):
    """What both blocks share: relu(branch(x)·gate + shortcut(x)), and starting the branch at
    zero when asked (`zero_init_residual`): γ of its last norm at 0, or, where that norm has no
    γ, a learnable scalar gate at 0 (SkipInit, De & Smith 2020)."""

    gate: nn.Parameter | None

    def _start(self, last_norm: nn.Module, zero_init_residual: bool) -> None:
        self.register_parameter("gate", None)
        if not zero_init_residual:
            return
        if getattr(last_norm, "weight", None) is not None:
            nn.init.zeros_(last_norm.weight)
        else:
            self.gate = nn.Parameter(torch.zeros(()))

    def _join(self, branch: Tensor, x: Tensor) -> Tensor:
        if self.gate is not None:
            branch = branch * self.gate
        return self.relu(branch + self.shortcut(x))


class BasicBlock(_Residual):
    expansion = 1

    def __init__(
        self, cin: int, planes: int, stride: int, norm: NormFactory, zero_init_residual: bool
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.norm1 = norm(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.norm2 = norm(planes)
        self.shortcut = _shortcut(cin, planes, stride, norm)
        self.relu = nn.ReLU(inplace=True)
        self._start(self.norm2, zero_init_residual)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.norm1(self.conv1(x)))
        return self._join(self.norm2(self.conv2(out)), x)


class Bottleneck(_Residual):
    # Stride sits on the 3×3 conv, as in torchvision ("ResNet v1.5").
    expansion = 4

    def __init__(
        self, cin: int, planes: int, stride: int, norm: NormFactory, zero_init_residual: bool
    ) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = _conv1x1(cin, planes)
        self.norm1 = norm(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.norm2 = norm(planes)
        self.conv3 = _conv1x1(planes, cout)
        self.norm3 = norm(cout)
        self.shortcut = _shortcut(cin, cout, stride, norm)
        self.relu = nn.ReLU(inplace=True)
        self._start(self.norm3, zero_init_residual)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.relu(self.norm2(self.conv2(out)))
        return self._join(self.norm3(self.conv3(out)), x)


# The one table of depths: block type and blocks per stage.
RESNETS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
}


class ResNet(nn.Module):
    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        depths: list[int],
        norm: NormFactory,
        in_channels: int,
        num_classes: int,
        width: int,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv3x3(in_channels, width), norm(width), nn.ReLU(inplace=True))
        stages: list[nn.Module] = []
        cin = width
        for i, depth in enumerate(depths):
            planes = width * 2**i
            blocks = []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block(cin, planes, stride, norm, zero_init_residual))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        # Kaiming-normal (fan_out) convs as torchvision; norm layers initialise themselves
        # (γ=1, β=0 where they exist) and the classifier keeps PyTorch's default, as torchvision.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem(x))
        return self.fc(self.pool(x).flatten(1))


def build_resnet(
    name: str,
    norm: NormFactory,
    in_channels: int,
    num_classes: int,
    width: int = 64,
    zero_init_residual: bool = False,
) -> ResNet:
    """ResNet `name` (a key of RESNETS) for small images with the given normalization layer."""
    block, depths = RESNETS[name]
    return ResNet(block, depths, norm, in_channels, num_classes, width, zero_init_residual)
