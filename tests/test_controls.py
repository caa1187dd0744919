"""The controls that separate initialization from normalization, each against a hand
computation: data-dependent init, LSUV, zero-init residuals, scale or shift alone, GroupNorm,
folding BatchNorm after K epochs, and training only γ and β."""

import csv
from pathlib import Path

import pytest
import torch
from torch import nn

from bnstudy import session
from bnstudy.config import ConfigError, validate
from bnstudy.init import data_init_affine, fold_norms, lsuv
from bnstudy.models import RESNETS, BasicBlock, Bottleneck, build_resnet
from bnstudy.norms import AffineLayer, GroupNorm, make_norm
from bnstudy.parts import build_parts
from bnstudy.train import train_step
from tests.conftest import TINY, make_config

CPU = torch.device("cpu")


def images(n: int = 32, channels: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, channels, 16, 16, generator=g) * 2 + 0.5


def resnet(name: str, norm: str, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return build_resnet(name, make_norm(norm, **kwargs), 3, 10, width=4)


@pytest.mark.parametrize("name", list(RESNETS))
def test_affine_with_data_init_computes_what_batchnorm_computes_in_its_first_step(name):
    batchnorm, affine = resnet(name, "batchnorm"), resnet(name, "affine")
    shared = {k: v for k, v in batchnorm.state_dict().items() if "conv" in k or "fc" in k}
    shared.update({k: v for k, v in batchnorm.state_dict().items() if k.endswith("0.weight")})
    affine.load_state_dict(shared, strict=False)  # the same convs and classifier
    x = images()
    data_init_affine(affine, x, eps=1e-5)
    with torch.no_grad():
        expected = batchnorm.train()(x)
        got = affine(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(affine(x), resnet(name, "affine")(x))  # init=data changed it


@pytest.mark.parametrize("norm", ["none", "bnminus", "batchnorm"])
def test_lsuv_gives_every_conv_unit_output_variance_on_the_init_batch(norm):
    model = resnet("resnet18", norm).eval()
    x = images()
    lsuv(model, x)
    variances = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: variances.append(out.var().item()))
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    assert len(variances) == 20 and variances == pytest.approx([1.0] * 20, rel=1e-3)


@pytest.mark.parametrize("norm", ["batchnorm", "affine", "bnminus", "none", "groupnorm"])
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_zero_init_residual_makes_every_block_compute_relu_of_its_shortcut(norm, name):
    torch.manual_seed(0)
    model = build_resnet(name, make_norm(norm), 3, 10, width=8, zero_init_residual=True)
    checked = []

    def check(block, inputs, out):
        (x,) = inputs
        torch.testing.assert_close(out, torch.relu(block.shortcut(x)))
        checked.append(block)

    blocks = [m for m in model.modules() if isinstance(m, BasicBlock | Bottleneck)]
    for block in blocks:
        block.register_forward_hook(check)
    with torch.no_grad():
        model.train()(images())
    assert len(checked) == len(blocks) == sum(RESNETS[name][1])
    gated = norm in ("bnminus", "none")  # no γ to zero: a SkipInit gate instead
    assert all((b.gate is not None) == gated for b in blocks)


@pytest.mark.parametrize(("params", "per_layer"), [("both", 2), ("scale", 1), ("shift", 1)])
@pytest.mark.parametrize("norm", ["batchnorm", "affine"])
def test_scale_or_shift_alone(norm, params, per_layer):
    layer = make_norm(norm, params=params)(6)
    assert sum(p.numel() for p in layer.parameters()) == per_layer * 6
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.linspace(0.5, 2.0, 6))
    x = images(8, channels=6)
    if norm == "batchnorm":
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        x_hat = (x - mean) / torch.sqrt(var + 1e-5)
    else:
        x_hat = x
    value = torch.linspace(0.5, 2.0, 6).view(1, 6, 1, 1)
    scale = value if params in ("both", "scale") else 1.0
    shift = value if params in ("both", "shift") else 0.0
    torch.testing.assert_close(layer.train()(x), scale * x_hat + shift, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("channels", "groups"), [(64, 32), (48, 24), (24, 24), (8, 8), (6, 6)])
def test_groupnorm_uses_the_largest_group_count_that_divides_the_channels(channels, groups):
    layer = GroupNorm(channels, groups=32)
    assert layer.num_groups == groups
    x = images(4, channels=channels)
    by_group = x.view(4, groups, -1)
    mean = by_group.mean(-1, keepdim=True)
    var = by_group.var(-1, unbiased=False, keepdim=True)
    expected = ((by_group - mean) / torch.sqrt(var + 1e-5)).view_as(x)
    torch.testing.assert_close(layer.train()(x), expected, rtol=1e-4, atol=1e-5)
    # Its statistics are per image: an image alone is normalized as within the batch.
    torch.testing.assert_close(layer(x[:1]), layer(x)[:1])


def trained_parts(*overrides: str, steps: int = 3):
    parts = build_parts(make_config(*TINY, *overrides), CPU)
    batches = iter(parts.train_loader)
    for _ in range(steps):
        x, y = next(batches)
        train_step(parts.model, x, y, parts.optimizer)
    return parts


@pytest.mark.parametrize("norm", ["batchnorm", "bnminus"])
def test_folding_keeps_the_eval_outputs_and_the_optimizer_state(norm):
    parts = trained_parts(f"norm={norm}")
    model = parts.model.eval()
    x = next(iter(parts.test_loader))[0]
    with torch.no_grad():
        before = model(x)
    gammas = [m.weight for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [parts.optimizer.state[g]["momentum_buffer"].clone() for g in gammas if g is not None]
    new = fold_norms(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    affines = [m for m in model.modules() if isinstance(m, AffineLayer)]
    assert len(affines) == 20
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-5)
    if norm == "batchnorm":  # the same γ objects: their optimizer state carries over
        assert new == [] and [a.weight for a in affines] == gammas
        for g, m in zip(gammas, momenta, strict=True):
            assert torch.equal(parts.optimizer.state[g]["momentum_buffer"], m)
    else:
        assert len(new) == 40


def metrics_of(folder: Path) -> list[dict[str, str]]:
    with open(folder / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:  # timings differ from run to run
        del row["epoch_seconds"], row["train_images_per_s"]
    return rows


@pytest.mark.parametrize("norm", ["batchnorm", "bnminus"])
def test_a_run_frozen_after_one_epoch_resumes_across_the_fold_exactly(tmp_path, monkeypatch, norm):
    args = [*TINY, f"norm={norm}", "norm.freeze_after=1", "trainer.epochs=3"]
    session.execute(make_config(*args), tmp_path / "straight")
    real_fit = session.fit

    def fit_then_ctrl_c(*a, on_epoch_end, **k):
        def end(m):
            on_epoch_end(m)
            if m.epoch == 2:
                raise KeyboardInterrupt

        return real_fit(*a, on_epoch_end=end, **k)

    monkeypatch.setattr(session, "fit", fit_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        session.execute(make_config(*args), tmp_path / "resumed")
    monkeypatch.undo()
    assert session.execute(make_config(*args), tmp_path / "resumed").status == "completed"
    assert metrics_of(tmp_path / "resumed") == metrics_of(tmp_path / "straight")


def test_training_only_the_norm_parameters_leaves_every_conv_bit_identical():
    parts = build_parts(make_config(*TINY, "trainer.train_only=norm"), CPU)
    convs = {n: p.detach().clone() for n, p in parts.model.named_parameters() if "conv" in n}
    gammas = {n: p.detach().clone() for n, p in parts.model.named_parameters() if "norm" in n}
    batches = iter(parts.train_loader)
    for _ in range(3):
        x, y = next(batches)
        train_step(parts.model, x, y, parts.optimizer)
    for name, value in parts.model.named_parameters():
        if name in convs:
            assert torch.equal(value, convs[name]), name
        if name in gammas:
            assert not torch.equal(value, gammas[name]), name


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["norm=none", "norm.init=data"], "norm.init=data does not go with norm=none"),
        (["norm=bnminus", "norm.params=scale"], "norm.params=scale does not go with norm=bnminus"),
        (
            ["norm=affine", "norm.freeze_after=1"],
            "norm.freeze_after=1 does not go with norm=affine",
        ),
        (["norm.freeze_after=2"], "norm.freeze_after=2 must be in 1..trainer.epochs-1"),
        (["norm=none", "trainer.train_only=norm"], "trainer.train_only=norm does not go with"),
        (
            ["norm=affine", "norm.init=data", "model.zero_init_residual=true"],
            "norm.init=data does not go with model.zero_init_residual=true",
        ),
        (["model.init=orthogonal"], "model.init='orthogonal' is not known"),
    ],
)
def test_combinations_that_make_no_sense_are_refused_naming_both_keys(overrides, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("=", "=")):
        validate(make_config(*TINY, *overrides))


ABLATIONS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "ablation").glob("*"))


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_every_ablation_cell_composes_and_validates(ablation):
    for model in ("resnet18", "resnet50"):
        validate(make_config("experiment=ablations", f"ablation={ablation}", f"model={model}"))
