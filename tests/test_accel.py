"""Fast paths: each gives the plain path's results on the CPU, or is refused where it cannot."""

import csv
import itertools
import subprocess
import sys

import pytest
import torch

from bnstudy import session
from bnstudy.config.checks import validate
from bnstudy.config.preflight import resolved
from bnstudy.data.datasets import DATASETS, Split
from bnstudy.data.loader import GpuLoader
from bnstudy.errors import ConfigError
from bnstudy.records import NUMBER_FORMAT, OPTIMIZATION, identity
from bnstudy.study.models import build_resnet
from bnstudy.study.norms import NORMS, make_norm
from bnstudy.training import accel
from bnstudy.training.accel import FastPathError, resolve_fast_paths
from bnstudy.training.loop import Diverged, train_epoch, train_step
from tests.helpers import REPO, TINY, make_config, run_cli

CPU = torch.device("cpu")


def test_fp16_and_cuda_graphs_are_refused_on_the_cpu():
    with pytest.raises(FastPathError, match="trainer.precision=fp16 needs CUDA"):
        resolve_fast_paths(CPU, precision="fp16")
    with pytest.raises(FastPathError, match="trainer.compile=reduce-overhead"):
        resolve_fast_paths(CPU, compile="reduce-overhead")
    with pytest.raises(FastPathError, match="bf16 is not supported on mps"):
        resolve_fast_paths(torch.device("mps"), precision="bf16")


def test_deterministic_turns_cudnn_benchmark_off_and_keeps_the_run_identity():
    # cudnn.benchmark times kernels in each process: two processes may pick different ones.
    assert not resolve_fast_paths(CPU, deterministic=True).cudnn_benchmark
    assert resolve_fast_paths(CPU).cudnn_benchmark and not resolve_fast_paths(CPU).deterministic
    plain = identity(resolved(make_config(*TINY)))
    assert identity(resolved(make_config(*TINY, "trainer.deterministic=true"))) == plain


def test_auto_precision_is_bf16_where_the_gpu_has_it_and_never_fp16(monkeypatch):
    cuda = torch.device("cuda")
    for has_bf16, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda has=has_bf16: has)
        assert accel.resolve_precision(cuda, "auto") == expected
    assert accel.resolve_precision(CPU, "auto") == "fp32"
    assert accel.resolve_precision(cuda, "fp16") == "fp16"  # asked for: as asked


@pytest.mark.parametrize(
    ("overrides", "what"),
    [
        (["norm=none"], "norm=none"),
        (["norm=affine"], "norm=affine"),
        (["norm=affine", "norm.init=data"], "norm=affine"),
        (["norm=batchnorm", "norm.freeze_after=1"], "norm=batchnorm norm.freeze_after=1"),
    ],
)
def test_fp16_without_normalization_is_refused_naming_the_reason(overrides, what):
    # Refused before the device is looked at: the reason holds on every GPU.
    with pytest.raises(ConfigError) as refused:
        validate(make_config(*TINY, "trainer.precision=fp16", *overrides))
    assert str(refused.value) == (
        f"trainer.precision=fp16 does not go with {what}: without normalization the "
        "activations can exceed fp16's range (65,504) and the run would diverge because of "
        "the number format; use trainer.precision=bf16 or fp32"
    )


def overflowing_model() -> torch.nn.Module:
    """Logits of 1.2·10⁵ from inputs of 1: finite in fp32, beyond fp16's 65,504."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    with torch.no_grad():
        model[0].weight.fill_(3e4)
        model[0].bias.zero_()
    return model


def one_epoch(model, dtype, scaler=None):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = [(torch.ones(8, 4), torch.zeros(8, dtype=torch.long))] * 3
    train_epoch(model, data, optimizer, epoch=1, log_every=50, progress=False,
                autocast_dtype=dtype, scaler=scaler)  # fmt: skip


def test_a_forward_pass_beyond_fp16s_range_is_a_divergence_of_the_number_format():
    # fp16 as on a GPU: with loss scaling, whose skipped steps leave the weights finite.
    with pytest.raises(Diverged) as diverged:
        one_epoch(overflowing_model(), torch.float16, torch.amp.GradScaler("cpu"))
    assert diverged.value.reason == NUMBER_FORMAT
    assert str(diverged.value) == (
        "non-finite logits under fp16 autocast in epoch 1 at step 1; the same weights give "
        "finite fp32 logits (number format, not optimization)"
    )
    one_epoch(overflowing_model(), None)  # fp32: the same model trains


def test_a_non_finite_loss_in_fp32_stays_a_divergence_of_the_optimization():
    model = overflowing_model()
    with torch.no_grad():
        model[0].weight.fill_(float("inf"))
    for dtype, message in (
        (None, "non-finite training loss in epoch 1 at step 1"),
        (torch.bfloat16, "non-finite training loss under bf16 autocast in epoch 1 at step 1; "
                         "the weights are no longer finite (optimization)"),
    ):  # fmt: skip
        with pytest.raises(Diverged) as diverged:
            one_epoch(model, dtype)
        assert diverged.value.reason == OPTIMIZATION and str(diverged.value) == message


def test_a_divergence_of_the_number_format_is_recorded_with_its_reason(tmp_path, monkeypatch):
    def fit_diverges(*args, **kwargs):
        raise Diverged(1, 3, NUMBER_FORMAT, "non-finite logits under fp16 autocast in …")

    monkeypatch.setattr(session, "fit", fit_diverges)
    assert session.execute(make_config(*TINY), tmp_path).status == "diverged"
    with open(tmp_path / "summary.csv", newline="") as f:
        [summary] = list(csv.DictReader(f))
    assert summary["status"] == "diverged" and summary["diverged_reason"] == NUMBER_FORMAT
    assert summary["error"] == "non-finite logits under fp16 autocast in …"


def train_a_few_steps(
    norm: str, precision: str, channels_last: bool, compile: str = "none", steps: int = 4
):
    """Losses and final weights of a few SGD steps on fixed data, via bnstudy's fast paths."""
    torch.manual_seed(0)
    model = build_resnet("resnet18", make_norm(norm), 3, 10, width=8)
    fast = resolve_fast_paths(CPU, precision, channels_last, compile)
    train_model = accel.prepare_model(model, fast)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=g)
    split = Split(images, torch.randint(0, 10, (32,), generator=g))
    loader = GpuLoader(
        split,
        DATASETS["cifar10"],
        16,
        CPU,
        train=True,
        augment=True,
        generator=torch.Generator().manual_seed(2),
        memory_format=fast.memory_format,
    )
    losses = []
    for x, y in itertools.islice(itertools.chain(loader, loader), steps):  # two epochs at most
        loss, _ = train_step(train_model, x, y, optimizer, fast.autocast_dtype)
        losses.append(loss.item())
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    return torch.tensor(losses), weights


def assert_same_training(norm: str, fast: dict, plain: dict) -> None:
    """After one step the weights agree to fp32 rounding; over 4 steps the losses agree to
    1% (rounding differences grow about tenfold per step with batches of 16)."""
    _, fast_weights = train_a_few_steps(norm, **fast, steps=1)
    _, plain_weights = train_a_few_steps(norm, **plain, steps=1)
    assert (fast_weights - plain_weights).norm() < 1e-4 * plain_weights.norm()
    fast_losses, _ = train_a_few_steps(norm, **fast)
    plain_losses, _ = train_a_few_steps(norm, **plain)
    torch.testing.assert_close(fast_losses, plain_losses, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("norm", list(NORMS))
def test_channels_last_gives_the_plain_results(norm):
    fp32 = {"precision": "fp32"}
    assert_same_training(norm, {**fp32, "channels_last": True}, {**fp32, "channels_last": False})


@pytest.mark.parametrize("norm", list(NORMS))
def test_bf16_autocast_stays_close_to_fp32(norm):
    plain_losses, plain_weights = train_a_few_steps(norm, "fp32", channels_last=False)
    fast_losses, fast_weights = train_a_few_steps(norm, "bf16", channels_last=True)
    # bf16 keeps 8 bits of mantissa: a few steps agree to about 1%.
    torch.testing.assert_close(fast_losses, plain_losses, rtol=3e-2, atol=3e-2)
    assert (fast_weights - plain_weights).norm() < 0.02 * plain_weights.norm()


def test_the_loader_hands_out_the_chosen_memory_format():
    split = Split(torch.zeros(8, 3, 6, 6, dtype=torch.uint8), torch.zeros(8, dtype=torch.long))
    for fmt in (torch.channels_last, torch.contiguous_format):
        loader = GpuLoader(split, DATASETS["cifar10"], 4, CPU, train=False, memory_format=fmt)
        x, _ = next(iter(loader))
        assert x.is_contiguous(memory_format=fmt)


@pytest.mark.kernels
@pytest.mark.slow
def test_compiled_model_gives_the_eager_results():
    plain = {"precision": "fp32", "channels_last": False}
    assert_same_training("batchnorm", {**plain, "compile": "default"}, plain)


@pytest.mark.slow
def test_cli_refuses_fp16_without_normalization_in_one_line(tmp_path):
    result = run_cli(*TINY, "norm=none", "trainer.precision=fp16", f"paths.output_root={tmp_path}")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("bnstudy: error: trainer.precision=fp16 does not go with norm=none")
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_cli_refuses_fp16_on_the_cpu_in_one_line(tmp_path):
    result = run_cli(*TINY, "trainer.precision=fp16", f"paths.output_root={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "bnstudy: error: trainer.precision=fp16 needs CUDA (its loss scaling); on cpu use bf16 "
        "or fp32"
    )


@pytest.mark.slow
def test_bench_prints_and_writes_both_paths(tmp_path):
    out = tmp_path / "bench.csv"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bnstudy.bench",
            *TINY,
            "batch_size=32",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--workers",
            "0",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "paper grid estimate: 80 runs" in result.stdout
    assert "lr_search grid estimate: 1680 runs" in result.stdout
    assert "paper_tuned grid estimate: 240 runs" in result.stdout
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == ["bnstudy", "reference"]
    assert all(float(r["images_per_s"]) > 0 and float(r["peak_memory_mb"]) > 0 for r in rows)
    assert float(rows[1]["vs_reference"]) == 1.0
    ratio = float(rows[0]["images_per_s"]) / float(rows[1]["images_per_s"])
    assert float(rows[0]["vs_reference"]) == pytest.approx(ratio, abs=0.01)
