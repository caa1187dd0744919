"""The controls that separate initialization from normalization, each against a hand
computation: data-dependent init, LSUV, zero-init residuals, scale or shift alone, GroupNorm,
folding BatchNorm after K epochs, and training only γ and β."""

import csv
from pathlib import Path

import pytest
import torch
from torch import nn

from bnstudy import session
from bnstudy.config.checks import validate
from bnstudy.errors import ConfigError
from bnstudy.study.init import data_init_affine, fold_norms, lsuv, population_statistics
from bnstudy.study.models import RESNETS, BasicBlock, Bottleneck, build_resnet
from bnstudy.study.norms import AffineLayer, FrozenNorm, GroupNorm, make_norm
from bnstudy.training.loop import train_step
from bnstudy.training.parts import build_model, build_parts, fold, population_batches
from tests.helpers import TINY, make_config

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


@pytest.mark.parametrize(("channels", "groups"), [(64, 32), (48, 24), (24, 12), (8, 4), (6, 3)])
def test_groupnorm_uses_the_largest_group_count_that_divides_the_channels(channels, groups):
    # At most 32 groups, and never fewer than 2 channels in a group (1 would be InstanceNorm).
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


def group_sizes(model: nn.Module) -> list[tuple[int, int]]:
    return [(m.num_channels, m.num_groups) for m in model.modules() if isinstance(m, GroupNorm)]


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
@pytest.mark.parametrize("width", [4, 8, 16, 32, 64])
def test_groupnorm_has_the_standard_channels_per_group_at_every_width(name, width):
    built = build_model(
        make_config(*TINY, "norm=groupnorm", f"model={name}", f"model.width={width}")
    )
    standard = build_model(make_config(*TINY, "norm=groupnorm", f"model={name}", "model.width=64"))
    sizes, standard_sizes = group_sizes(built), group_sizes(standard)
    # By hand: 32 groups at width 64 scale to width/2; a layer of C = width·2^i channels (or
    # 4× that in a bottleneck's last conv) keeps the C/G of the standard network.
    assert all(g == width // 2 for _, g in sizes)
    assert [c // g for c, g in sizes] == [c // g for c, g in standard_sizes]
    assert min(c // g for c, g in sizes) == 2
    assert {g for _, g in standard_sizes} == {32}  # Wu & He's 32 groups at the standard width


def test_a_groupnorm_run_records_the_groups_it_used(tmp_path):
    assert session.execute(make_config(*TINY, "norm=groupnorm"), tmp_path).status == "completed"
    with open(tmp_path / "summary.csv", newline="") as f:
        [summary] = list(csv.DictReader(f))
    assert summary["norm_groups"] == "8:4 16:4 32:4 64:4"  # width 8: 4 groups everywhere
    with open(tmp_path / "layers.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == "norm" and r["epoch"] == "0"]
    assert {(r["channels"], r["groups"]) for r in rows} == {
        ("8", "4"), ("16", "4"), ("32", "4"), ("64", "4")
    }  # fmt: skip


def trained_parts(*overrides: str, steps: int = 3):
    parts = build_parts(make_config(*TINY, *overrides), CPU)
    batches = iter(parts.train_loader)
    for _ in range(steps):
        x, y = next(batches)
        train_step(parts.model, x, y, parts.optimizer)
    return parts


def batchnorms(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.mark.parametrize("into", ["frozen_norm", "affine"])
@pytest.mark.parametrize("norm", ["batchnorm", "bnminus"])
def test_folding_keeps_the_eval_outputs(norm, into):
    parts = trained_parts(f"norm={norm}")
    model = parts.model.eval()
    x = next(iter(parts.test_loader))[0]
    with torch.no_grad():
        before = model(x)
    gammas = [m.weight for m in batchnorms(model)]
    folds = fold_norms(model, into)
    assert not batchnorms(model) and len(folds) == 20
    kind = FrozenNorm if into == "frozen_norm" else AffineLayer
    assert len([m for m in model.modules() if isinstance(m, kind)]) == 20
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-5)
        # Nothing depends on the batch any more: training mode computes what eval does.
        torch.testing.assert_close(model.train()(x), before, rtol=1e-4, atol=1e-5)
    new = [p for f in folds for p in f.new_parameters]
    # BN-minus has no γ and β: it keeps none in a FrozenNorm, and gets fresh ones as affine.
    assert len(new) == (40 if (norm, into) == ("bnminus", "affine") else 0)
    if norm == "batchnorm":  # the same Parameter objects: the optimizer keeps its hold
        assert [f.gamma for f in folds] == gammas


def close(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("optim", ["sgd", "adam"])
def test_fold_into_affine_maps_gamma_beta_and_their_optimizer_state_by_hand(optim):
    parts = trained_parts("norm=batchnorm", f"optim={optim}")
    norms = batchnorms(parts.model)
    keys = ("momentum_buffer",) if optim == "sgd" else ("exp_avg", "exp_avg_sq", "step")
    before = [
        {
            "mean": n.running_mean.double(),
            "s": 1 / torch.sqrt(n.running_var.double() + n.eps),
            "gamma": n.weight.detach().double().clone(),
            "beta": n.bias.detach().double().clone(),
            **{f"g_{k}": parts.optimizer.state[n.weight][k].double().clone() for k in keys},
            **{f"b_{k}": parts.optimizer.state[n.bias][k].double().clone() for k in keys},
        }
        for n in norms
    ]
    cfg = make_config(*TINY, "norm=batchnorm", f"optim={optim}", "norm.freeze_after=1",
                      "norm.fold_into=affine", "norm.fold_stats=running")  # fmt: skip
    fold(parts, cfg.norm, cfg.optim.norm_weight_decay)
    state = parts.optimizer.state
    for n, b in zip(norms, before, strict=True):
        s, mu = b["s"], b["mean"]
        close(n.weight.detach(), b["gamma"] * s)  # γ' = γ/σ
        close(n.bias.detach(), b["beta"] - b["gamma"] * mu * s)  # β' = β − γμ/σ
        first = "momentum_buffer" if optim == "sgd" else "exp_avg"
        close(state[n.weight][first], b[f"g_{first}"] * s)  # buf_γ' = buf_γ/σ
        close(state[n.bias][first], b[f"b_{first}"] - b[f"g_{first}"] * mu * s)
        if optim == "adam":  # squares of the map's coefficients; the step count as it was
            close(state[n.weight]["exp_avg_sq"], b["g_exp_avg_sq"] * s**2)
            close(
                state[n.bias]["exp_avg_sq"], b["b_exp_avg_sq"] + b["g_exp_avg_sq"] * (mu * s) ** 2
            )
            close(state[n.weight]["step"], b["g_step"])


def test_fold_into_frozen_norm_keeps_gamma_beta_their_state_and_their_decay():
    parts = trained_parts("norm=batchnorm", "optim.norm_weight_decay=0.01")
    norms = batchnorms(parts.model)
    kept = [(n.weight.detach().clone(), parts.optimizer.state[n.weight]["momentum_buffer"].clone())
            for n in norms]  # fmt: skip
    cfg = make_config(*TINY, "norm=batchnorm", "norm.freeze_after=1", "norm.fold_stats=running")
    fold(parts, cfg.norm, 0.01)
    frozen = [m for m in parts.model.modules() if isinstance(m, FrozenNorm)]
    [decayed] = [g for g in parts.optimizer.param_groups if g["weight_decay"] == 0.01]
    for n, f, (gamma, buffer) in zip(norms, frozen, kept, strict=True):
        assert f.weight is n.weight and torch.equal(f.weight, gamma)  # γ itself, not γ/σ
        assert torch.equal(parts.optimizer.state[f.weight]["momentum_buffer"], buffer)
        assert any(p is f.weight for p in decayed["params"])  # decayed as before the fold
        assert torch.equal(f.running_mean, n.running_mean)


def test_fold_momentum_reset_starts_gamma_and_beta_afresh():
    parts = trained_parts("norm=batchnorm")
    norms = batchnorms(parts.model)
    cfg = make_config(*TINY, "norm.freeze_after=1", "norm.fold_momentum=reset")
    fold(parts, cfg.norm, cfg.optim.norm_weight_decay)
    assert all(n.weight not in parts.optimizer.state for n in norms)
    convs = [m.weight for m in parts.model.modules() if isinstance(m, nn.Conv2d)]
    assert all("momentum_buffer" in parts.optimizer.state[w] for w in convs)


def test_population_statistics_are_the_training_sets_by_hand():
    parts = trained_parts("norm=batchnorm")
    model = parts.model
    running = {n: b.clone() for n, b in model.named_buffers()}
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats = population_statistics(model, population_batches(parts))
    # By hand, in float64: every training image unaugmented, in batches of the training
    # batch size (64 of the 192: the last partial one left out); the stem's BatchNorm sees
    # conv(x); the first block's, conv1 of the stem's output normalized by each batch's own
    # statistics, as a training step computes it.
    loader = parts.train_loader
    n = len(loader.images) // loader.batch_size * loader.batch_size
    x = loader.images[:n].double() * loader.scale.double() + loader.shift.double()
    stem_conv, stem_bn = model.stem[0], model.stem[1]
    block = model.stages[0][0]
    with torch.no_grad():
        h = nn.functional.conv2d(x, stem_conv.weight.double(), padding=1)
        parts_of_h = []
        for batch in h.split(loader.batch_size):
            mean = batch.mean(dim=(0, 2, 3), keepdim=True)
            var = batch.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
            normed = (batch - mean) / torch.sqrt(var + stem_bn.eps)
            normed = normed * stem_bn.weight.double().view(1, -1, 1, 1)
            normed = normed + stem_bn.bias.double().view(1, -1, 1, 1)
            parts_of_h.append(
                nn.functional.conv2d(torch.relu(normed), block.conv1.weight.double(), padding=1)
            )
        g = torch.cat(parts_of_h)
    for name, value in (("stem.1", h), ("stages.0.0.norm1", g)):
        mean, var = stats[name]
        torch.testing.assert_close(mean.double(), value.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(
            var.double(), value.var(dim=(0, 2, 3), unbiased=False), rtol=1e-4, atol=1e-5
        )
    assert not torch.allclose(stats["stem.1"][0], model.stem[1].running_mean)  # not the EMA
    # Nothing else changed: running statistics, batch counts and weights are as they were.
    assert all(torch.equal(b, running[n]) for n, b in model.named_buffers())
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())


def metrics_of(folder: Path) -> list[dict[str, str]]:
    with open(folder / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:  # timings differ from run to run
        del row["epoch_seconds"], row["train_images_per_s"]
    return rows


@pytest.mark.parametrize(
    ("norm", "fold_keys"),
    [
        ("batchnorm", ()),  # frozen_norm, population statistics, momentum mapped (identity)
        ("batchnorm", ("norm.fold_into=affine",)),  # momentum through the fold's map
        ("bnminus", ("norm.fold_into=affine", "norm.fold_stats=running")),  # new γ and β
    ],
)
def test_a_run_frozen_after_one_epoch_resumes_across_the_fold_exactly(
    tmp_path, monkeypatch, norm, fold_keys
):
    args = [*TINY, f"norm={norm}", "norm.freeze_after=1", "trainer.epochs=3", *fold_keys]
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
        (
            ["norm.fold_stats=running"],
            "norm.fold_stats=running acts at the fold; set norm.freeze_after=K or leave",
        ),
        (["norm.freeze_after=1", "norm.fold_into=ghost"], "norm.fold_into='ghost' is not known"),
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
