"""Fast paths: each gives the plain path's results on the CPU, or is refused where it cannot."""

import csv
import itertools
import subprocess
import sys

import pytest
import torch

from bnstudy import accel
from bnstudy.accel import FastPathError, resolve_fast_paths
from bnstudy.data import DATASETS, Split
from bnstudy.loader import GpuLoader
from bnstudy.models import build_resnet
from bnstudy.norms import NORMS, make_norm
from bnstudy.preflight import resolved
from bnstudy.records import identity
from bnstudy.train import train_step
from tests.conftest import REPO, TINY, make_config, run_cli

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
    assert "lr_search grid estimate: 560 runs" in result.stdout
    assert "paper_tuned grid estimate: 240 runs" in result.stdout
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == ["bnstudy", "reference"]
    assert all(float(r["images_per_s"]) > 0 and float(r["peak_memory_mb"]) > 0 for r in rows)
    assert float(rows[1]["vs_reference"]) == 1.0
    ratio = float(rows[0]["images_per_s"]) / float(rows[1]["images_per_s"])
    assert float(rows[0]["vs_reference"]) == pytest.approx(ratio, abs=0.01)
