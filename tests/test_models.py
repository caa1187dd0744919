import pytest
import torch
import torchvision
from torch import nn

from bnstudy.study.models import RESNETS, Bottleneck, build_resnet
from bnstudy.study.norms import NORMS, AffineLayer, BatchNormMinus, count_norm_parameters, make_norm


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def torchvision_with_3x3_stem(name: str) -> nn.Module:
    model = getattr(torchvision.models, name)(num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    return model


def test_resnet18_batchnorm_has_the_cifar10_parameter_count():
    assert n_params(build_resnet("resnet18", make_norm("batchnorm"), 3, 10)) == 11_173_962


@pytest.mark.parametrize("name", list(RESNETS))
def test_parameter_count_equals_torchvision_with_3x3_stem(name):
    ours = build_resnet(name, make_norm("batchnorm"), 3, 10, width=64)
    assert n_params(ours) == n_params(torchvision_with_3x3_stem(name))


@pytest.mark.parametrize("name", list(RESNETS))
def test_variants_differ_only_in_norm_parameters(name):
    counts = {norm: build_resnet(name, make_norm(norm), 3, 10, width=8) for norm in NORMS}
    bn = counts["batchnorm"]
    assert count_norm_parameters(counts["affine"]) == count_norm_parameters(bn) > 0
    assert count_norm_parameters(counts["bnminus"]) == count_norm_parameters(counts["none"]) == 0
    for model in counts.values():
        assert n_params(model) == n_params(bn) - count_norm_parameters(bn) + count_norm_parameters(
            model
        )


def test_depths_use_the_standard_blocks_and_stages():
    model = build_resnet("resnet101", make_norm("bnminus"), 3, 10, width=4)
    assert [len(stage) for stage in model.stages] == [3, 4, 23, 3]
    assert all(isinstance(block, Bottleneck) for stage in model.stages for block in stage)
    assert sum(isinstance(m, BatchNormMinus) for m in model.modules()) == 3 * 33 + 4 + 1


def test_small_image_stem_keeps_resolution():
    model = build_resnet("resnet18", make_norm("affine"), 1, 10, width=4)
    stem_conv = model.stem[0]
    assert (stem_conv.kernel_size, stem_conv.stride, stem_conv.in_channels) == ((3, 3), (1, 1), 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert isinstance(model.stem[1], AffineLayer)
    features = model.stages(model.stem(torch.zeros(2, 1, 28, 28)))
    assert features.shape == (2, 32, 4, 4)  # three stride-2 stages: 28 -> 14 -> 7 -> 4
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_convs_are_kaiming_normal_fan_out():
    torch.manual_seed(0)
    model = build_resnet("resnet18", make_norm("batchnorm"), 3, 10, width=64)
    conv = model.stages[3][0].conv2  # 512×512×3×3: many weights, so the std is precise
    fan_out = conv.out_channels * 9
    assert conv.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.01)
    assert conv.weight.mean().item() == pytest.approx(0.0, abs=1e-3)
