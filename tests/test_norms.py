from pathlib import Path

import pytest
import torch
from torch import nn

from bnstudy.study.norms import AffineLayer, BatchNormMinus, count_norm_parameters, make_norm

CONF = Path(__file__).resolve().parents[1] / "conf"
EPS = 1e-5


def batch(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 3, 5, 5, generator=g) * 3 + 2


def by_hand_normalized(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + EPS)


def set_gamma_beta(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    gamma, beta = torch.tensor([0.5, 2.0, -1.0]), torch.tensor([1.0, -3.0, 0.25])
    with torch.no_grad():
        layer.weight.copy_(gamma)
        layer.bias.copy_(beta)
    return gamma.view(1, 3, 1, 1), beta.view(1, 3, 1, 1)


def test_batchnorm_train_is_gamma_times_batch_normalized_plus_beta():
    layer = make_norm("batchnorm")(3)
    gamma, beta = set_gamma_beta(layer)
    x = batch()
    torch.testing.assert_close(layer.train()(x), gamma * by_hand_normalized(x) + beta)


def test_batchnorm_eval_uses_running_statistics():
    layer = make_norm("batchnorm", momentum=1.0)(3)  # momentum 1: running stats = last batch
    gamma, beta = set_gamma_beta(layer)
    x = batch()
    layer.train()(x)
    mean = x.mean(dim=(0, 2, 3)).view(1, 3, 1, 1)
    var = x.var(dim=(0, 2, 3), unbiased=True).view(1, 3, 1, 1)  # PyTorch keeps unbiased var
    y = batch(seed=1)
    expected = gamma * (y - mean) / torch.sqrt(var + EPS) + beta
    torch.testing.assert_close(layer.eval()(y), expected)


def test_bnminus_train_is_batch_normalized_without_scale_or_shift():
    layer = make_norm("bnminus")(3).train()
    x = batch()
    torch.testing.assert_close(layer(x), by_hand_normalized(x))


def test_bnminus_eval_uses_running_statistics():
    layer = make_norm("bnminus", momentum=1.0)(3)
    x = batch()
    layer.train()(x)
    mean = x.mean(dim=(0, 2, 3)).view(1, 3, 1, 1)
    var = x.var(dim=(0, 2, 3), unbiased=True).view(1, 3, 1, 1)
    y = batch(seed=1)
    torch.testing.assert_close(layer.eval()(y), (y - mean) / torch.sqrt(var + EPS))


def test_bnminus_has_no_learnable_parameters_but_running_statistics():
    layer = BatchNormMinus(3)
    assert list(layer.parameters()) == []
    assert {name for name, _ in layer.named_buffers()} >= {"running_mean", "running_var"}


def test_affine_is_gamma_times_x_plus_beta_in_train_and_eval():
    layer = AffineLayer(3)
    gamma, beta = set_gamma_beta(layer)
    x = batch()
    torch.testing.assert_close(layer.train()(x), gamma * x + beta)
    torch.testing.assert_close(layer.eval()(x), gamma * x + beta)


def test_affine_keeps_no_statistics():
    layer = AffineLayer(3)
    before = {name: b.clone() for name, b in layer.named_buffers()}
    layer.train()(batch(0) * 5)
    layer.train()(batch(1) - 7)
    assert list(layer.state_dict()) == ["weight", "bias"]  # nothing else is saved
    for name, constant in layer.named_buffers():  # the kernel's constants never move
        assert torch.equal(constant, before[name])
    x = batch(2)
    torch.testing.assert_close(layer.eval()(x), layer.train()(x))


def test_affine_is_exact_in_bf16_and_keeps_the_dtype():
    layer = AffineLayer(3)
    gamma, beta = set_gamma_beta(layer)
    x = batch().bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), (gamma * x.float() + beta), rtol=1e-2, atol=1e-2)


def test_affine_gradients_are_those_of_gamma_x_plus_beta():
    layer = AffineLayer(3)
    x = batch()
    layer(x).sum().backward()
    torch.testing.assert_close(layer.weight.grad, x.sum(dim=(0, 2, 3)))
    torch.testing.assert_close(layer.bias.grad, torch.full((3,), float(x[:, 0].numel())))


@pytest.mark.parametrize("name", ["batchnorm", "affine"])
def test_gamma_starts_at_one_and_beta_at_zero(name):
    layer = make_norm(name)(7)
    assert torch.equal(layer.weight, torch.ones(7))
    assert torch.equal(layer.bias, torch.zeros(7))


def test_none_is_the_identity_in_train_and_eval():
    layer = make_norm("none")(3)
    x = batch()
    assert torch.equal(layer.train()(x), x)
    assert torch.equal(layer.eval()(x), x)
    assert list(layer.parameters()) == []


def test_eps_and_momentum_reach_the_batchnorm_kinds():
    for name in ("batchnorm", "bnminus"):
        layer = make_norm(name, eps=1e-3, momentum=0.3)(4)
        assert (layer.eps, layer.momentum) == (1e-3, 0.3)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("batchnorm", 2 * 10), ("affine", 2 * 10), ("bnminus", 0), ("none", 0), ("groupnorm", 2 * 10)],
)
def test_norm_parameter_count(name, expected):
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), make_norm(name)(4), nn.Conv2d(4, 6, 3), make_norm(name)(6)
    )
    assert count_norm_parameters(model) == expected


def test_affine_gradients_with_gamma_not_one_reach_the_input_scaled_by_gamma():
    layer = AffineLayer(3)
    gamma, beta = set_gamma_beta(layer)
    x = batch().requires_grad_()
    upstream = batch(seed=2)
    (layer(x) * upstream).sum().backward()
    torch.testing.assert_close(x.grad, gamma * upstream)
    torch.testing.assert_close(layer.weight.grad, (x * upstream).sum(dim=(0, 2, 3)))
    torch.testing.assert_close(layer.bias.grad, upstream.sum(dim=(0, 2, 3)))


@pytest.mark.parametrize("name", ["batchnorm", "bnminus"])
def test_eval_normalizes_each_image_alone_with_the_running_statistics(name):
    # With batch statistics one image would be normalized differently alone than in a batch.
    layer = make_norm(name)(3)
    for seed in range(5):
        layer.train()(batch(seed))
    layer.eval()
    y = batch(seed=9)
    one_by_one = torch.cat([layer(y[i : i + 1]) for i in range(len(y))])
    torch.testing.assert_close(layer(y), one_by_one)
    mean, var = layer.running_mean.view(1, 3, 1, 1), layer.running_var.view(1, 3, 1, 1)
    scale, shift = (layer.weight, layer.bias) if name == "batchnorm" else (1.0, 0.0)
    expected = (y - mean) / torch.sqrt(var + EPS)
    if name == "batchnorm":
        expected = expected * scale.view(1, 3, 1, 1) + shift.view(1, 3, 1, 1)
    torch.testing.assert_close(layer(y), expected)


def test_groupnorm_in_train_and_eval_is_the_same_per_image_normalization():
    # Three groups of one channel would be InstanceNorm: 3 channels make one group of 3.
    layer = make_norm("groupnorm", groups=3)(3)
    assert layer.num_groups == 1
    gamma, beta = set_gamma_beta(layer)
    x = batch()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    var = x.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
    expected = gamma * (x - mean) / torch.sqrt(var + EPS) + beta
    torch.testing.assert_close(layer.train()(x), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer.eval()(x), expected, rtol=1e-4, atol=1e-5)
