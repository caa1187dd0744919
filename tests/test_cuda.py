"""The CUDA path through the real CLI: a killed run resumes bit for bit (fp32, bf16, and fp16
with its loss scale), the checkpoint brings back the CUDA generator, cudnn.benchmark and
torch.compile give the eager results, the loader's data stays on the GPU, and evaluate agrees
with a GPU-trained run. Marker `cuda`: skipped where PyTorch sees no CUDA GPU (CI); run for real
by scripts/device_check.sh.

Runs that must repeat bit for bit set trainer.deterministic=true: cuDNN then uses only
deterministic kernels, chosen without timing, so every process computes the same sums.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from bnstudy.data.datasets import DATASETS, Split
from bnstudy.data.loader import GpuLoader
from bnstudy.records import MODEL_FILE, RunFolder
from bnstudy.training.parts import build_parts, checkpoint_state, restore
from tests.helpers import REPO, TINY, make_config, run_cli, write_fashion_mnist

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

CUDA = torch.device("cuda")
EXACT = ("trainer.deterministic=true",)
TIMING = {"epoch_seconds", "train_images_per_s"}
LOSSES = ("train_loss", "val_loss", "test_loss")
# Long enough on a GPU that a kill after two epochs lands well before the end (each epoch:
# 63 steps of 64 images, then validation, test, layers.csv and a checkpoint).
RESUMED = ("trainer.epochs=12", "data.train_subset=4096")
ONE_EPOCH_FP32 = ("trainer.epochs=1", "trainer.precision=fp32")


@pytest.fixture(scope="module")
def fashion(tmp_path_factory) -> Path:
    """Fashion-MNIST files (random images, real format) for 4,096 training images: the GPU
    machine has no dataset of its own."""
    return write_fashion_mnist(tmp_path_factory.mktemp("fashion"), n_train=4096, n_test=256)


def on_gpu(fashion: Path, root: Path, *overrides: str) -> list[str]:
    """debug=fast's tiny run on the GPU, on `fashion`, recording under `root`."""
    return [
        *TINY,
        "device=cuda",
        f"dataset.root={fashion}",
        f"paths.output_root={root}",
        *overrides,
    ]


def output_root(args: list[str]) -> Path:
    [root] = [a.split("=", 1)[1] for a in args if a.startswith("paths.output_root=")]
    return Path(root)


def run_folder(root: Path) -> Path:
    [folder] = [p.parent for p in root.rglob("summary.csv")]
    return folder


def one_run(args: list[str]) -> Path:
    """The folder of the one run that `python -m bnstudy.run ARGS` trains."""
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    return run_folder(output_root(args))


def metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]


def losses(run: Path) -> torch.Tensor:
    return torch.tensor([[float(r[k]) for k in LOSSES] for r in metrics(run)])


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / MODEL_FILE, map_location="cpu", weights_only=True)


def start(args: list[str], log: Path) -> subprocess.Popen:
    """`python -m bnstudy.run ARGS` in the background, its stderr into `log` (a pipe could
    fill and stall it)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [sys.executable, "-m", "bnstudy.run", *args]
    with open(log, "w") as err:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)


def kill_after_two_epochs(args: list[str], log: Path) -> Path:
    """Start the run, SIGKILL it once two epochs are on disk; its folder."""
    process = start(args, log)
    deadline = time.time() + 300
    metrics_file = None
    while time.time() < deadline and process.poll() is None:
        found = list(output_root(args).rglob("metrics.csv"))
        if found and len(found[0].read_text().splitlines()) >= 3:
            metrics_file = found[0]
            break
        time.sleep(0.02)
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert metrics_file is not None, f"the run never wrote two epochs: {log.read_text()}"
    return metrics_file.parent


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_kill_9_then_resume_on_the_same_gpu_gives_identical_numbers(tmp_path, fashion, precision):
    args = (f"trainer.precision={precision}", *EXACT, *RESUMED)
    # The uninterrupted run trains beside the killed one: same GPU, deterministic kernels.
    reference = start(on_gpu(fashion, tmp_path / "ref", *args), tmp_path / "ref.log")
    crash_args = on_gpu(fashion, tmp_path / "crash", *args)
    run = kill_after_two_epochs(crash_args, tmp_path / "crash.log")
    with open(run / "summary.csv", newline="") as f:
        assert next(csv.DictReader(f))["status"] == "running"  # killed mid-run
    state = RunFolder(run).load_checkpoint()
    assert state is not None and 1 <= state["epoch"] < 12  # metrics go first
    assert state["precision"] == precision and state["device_type"] == "cuda"
    assert state["rng"]["cuda"].dtype == torch.uint8  # the CUDA generator, saved
    if precision == "fp16":  # the loss scale and its growth count travel with the weights
        assert state["scaler"]["scale"] > 0 and "_growth_tracker" in state["scaler"]
    else:
        assert "scaler" not in state

    resumed = run_cli(*crash_args)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    assert reference.wait(timeout=600) == 0, (tmp_path / "ref.log").read_text()
    expected = run_folder(tmp_path / "ref")
    rows = metrics(run)
    assert [r["epoch"] for r in rows] == [str(e) for e in range(1, 13)]  # every epoch once
    assert rows == metrics(expected)
    got, want = weights(run), weights(expected)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_a_checkpoint_brings_back_the_cuda_generator_and_the_loss_scale(tmp_path, fashion):
    cfg = make_config(*TINY, "device=cuda", "trainer.precision=fp16", f"dataset.root={fashion}")
    parts = build_parts(cfg, CUDA)
    parts.scaler.scale(torch.ones((), device=CUDA))  # the scale lives on the GPU once used
    parts.scaler.update(new_scale=1024.0)
    torch.rand(3, device=CUDA)  # the CUDA generator moves past where the seed put it
    folder = RunFolder(tmp_path)
    folder.save_checkpoint(checkpoint_state(parts, epoch=1))
    expected = torch.rand(5, device=CUDA)

    again = build_parts(cfg, CUDA)  # seeds every generator afresh, as a resumed process does
    assert again.scaler.get_scale() == 65536.0
    state = folder.load_checkpoint()
    assert restore(again, state, cfg.trainer.epochs, folder.checkpoint_path) == 2
    assert torch.equal(torch.rand(5, device=CUDA), expected)
    assert again.scaler.get_scale() == 1024.0


@pytest.fixture
def eager(tmp_path, fashion) -> Path:
    """One epoch (3 steps of 64 images) in fp32 on deterministic eager kernels."""
    return one_run(on_gpu(fashion, tmp_path / "eager", *ONE_EPOCH_FP32, *EXACT))


@pytest.mark.parametrize(
    "fast",
    [
        ("trainer.cudnn_benchmark=true",),
        ("trainer.compile=default", *EXACT),
        ("trainer.compile=reduce-overhead", *EXACT),
    ],
    ids=["cudnn_benchmark", "compile", "cuda_graphs"],
)
def test_fast_paths_give_the_eager_losses_to_one_percent(tmp_path, fashion, eager, fast):
    # In fp32 (no TF32) other kernels only round differently; over 3 steps that stays far
    # below 1% (the CPU's fast-path tests allow as much over 4 steps).
    run = one_run(on_gpu(fashion, tmp_path / "fast", *ONE_EPOCH_FP32, *fast))
    torch.testing.assert_close(losses(run), losses(eager), rtol=1e-2, atol=1e-3)


def test_the_loader_keeps_the_data_on_the_gpu():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (512, 3, 32, 32), dtype=torch.uint8, generator=g)
    split = Split(images, torch.randint(0, 10, (512,), generator=g))
    loader = GpuLoader(
        split,
        DATASETS["cifar10"],
        64,
        CUDA,
        train=True,
        generator=torch.Generator().manual_seed(1),
        memory_format=torch.channels_last,
    )
    assert loader.images.is_cuda and loader.labels.is_cuda
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        batches = list(loader)
        torch.cuda.synchronize()
    assert len(batches) == 8
    for x, y in batches:
        assert x.is_cuda and y.is_cuda and x.dtype == torch.float32
        assert x.is_contiguous(memory_format=torch.channels_last)
    # The epoch's permutation, crop offsets and flips are drawn on the CPU (its generator is
    # checkpointed) and copied over once each; no batch comes from the host.
    copies = [
        e.name for e in prof.events() if e.device_type == DeviceType.CUDA and "HtoD" in e.name
    ]
    assert 1 <= len(copies) <= 3, copies


def test_evaluate_on_the_gpu_agrees_with_a_gpu_trained_run(tmp_path, fashion):
    run = one_run(on_gpu(fashion, tmp_path, *EXACT))
    summary = RunFolder(run).read_summary()
    precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"  # trainer.precision=auto
    assert summary["trainer.precision"] == precision
    assert summary["device"].startswith("cuda (")
    result = run_cli(str(run), f"dataset.root={fashion}", *EXACT, module="bnstudy.evaluate")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"on cuda in {precision}" in result.stdout
    assert "(summary.csv: " in result.stdout and "): agrees" in result.stdout
