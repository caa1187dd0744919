"""Same config, same numbers, on every x86 CPU: portable kernels and a fixed thread count by
default, precision in the identity, and no native crash in PyTorch's CPU kernels at any width
(AVX2 and AVX-512 alike)."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bnstudy import records
from bnstudy.config import preflight
from bnstudy.config.checks import validate
from bnstudy.errors import ConfigError
from bnstudy.records import RunFolder
from bnstudy.training import kernels
from bnstudy.training.accel import resolve_fast_paths
from tests.helpers import REPO, TINY, make_config, run_cli

CPU = torch.device("cpu")


def test_cpu_defaults_are_fp32_and_nchw_whatever_the_processor():
    fast = resolve_fast_paths(CPU)
    assert (fast.precision, fast.channels_last) == ("fp32", False)
    assert resolve_fast_paths(CPU, precision="bf16", channels_last=True).precision == "bf16"


def test_the_resolved_precision_not_auto_identifies_a_run():
    auto = preflight.resolved(make_config(*TINY))
    assert auto["trainer"]["precision"] == "fp32"
    fp32 = preflight.resolved(make_config(*TINY, "trainer.precision=fp32"))
    bf16 = preflight.resolved(make_config(*TINY, "trainer.precision=bf16"))
    assert records.run_id(auto) == records.run_id(fp32) != records.run_id(bf16)
    assert records.run_path(auto) == records.run_path(fp32)


def test_channels_last_on_the_cpu_is_refused_below_width_8():
    for width in range(1, 8):
        cfg = make_config(*TINY, f"model.width={width}", "trainer.channels_last=true")
        with pytest.raises(ConfigError, match="trainer.channels_last=true on the CPU needs"):
            validate(cfg)
    validate(make_config(*TINY, "model.width=8", "trainer.channels_last=true"))


# One real training step through bnstudy's own path (loader, memory format, model, optimizer)
# at each width; a native crash or hang in the subprocess fails the test.
STEP = """
import sys
import torch
from bnstudy.training.parts import build_parts
from bnstudy.training.loop import train_step
from tests.helpers import TINY, make_config
channels_last = sys.argv[1] == "channels_last"
for width in range(1 if not channels_last else 8, 9):
    cfg = make_config(*TINY, f"model.width={width}", f"trainer.channels_last={channels_last}")
    parts = build_parts(cfg, torch.device("cpu"))
    x, y = next(iter(parts.train_loader))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert x.is_contiguous(memory_format=fmt) and x.stride()[1] == (1 if channels_last else 784)
    loss, _ = train_step(parts.train_model, x, y, parts.optimizer)
    assert torch.isfinite(loss)
    print("ok", width, flush=True)
"""


@pytest.mark.kernels
@pytest.mark.slow
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_one_training_step_at_every_small_width_does_not_crash(layout):
    try:
        result = subprocess.run(
            [sys.executable, "-c", STEP, layout],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"hung (a native kernel that never returns): {e.stdout!r}")
    widths = range(1, 9) if layout == "nchw" else range(8, 9)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stdout} {result.stderr}"
    assert result.stdout.split("\n")[:-1] == [f"ok {w}" for w in widths]


def _metrics_and_summary(root: Path) -> tuple[list[dict], dict]:
    [folder] = [p.parent for p in root.rglob("summary.csv")]
    with open(folder / "metrics.csv", newline="") as f:
        timing = ("epoch_seconds", "train_images_per_s")
        rows = [{k: v for k, v in r.items() if k not in timing} for r in csv.DictReader(f)]
    return rows, RunFolder(folder).read_summary()


@pytest.mark.slow
@pytest.mark.kernels
def test_a_run_gives_the_same_bytes_as_the_machine_is_and_capped_to_avx2_on_other_threads(
    tmp_path,
):
    # The environment as a user's shell has it: none of the settings bnstudy makes itself.
    ours = (*kernels.PORTABLE_ENV, kernels.CHOSEN_ENV, kernels.INDUCTOR_CACHE_ENV)
    as_is = {k: v for k, v in os.environ.items() if k not in (*ours, "OMP_NUM_THREADS")}
    # An AVX-512 machine made to run the AVX2 kernels, told to use one thread: what another
    # machine (AVX2 only, one core) would do if bnstudy did not fix both.
    capped = {**as_is, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    capped["OMP_NUM_THREADS"] = "1"
    # No normalization: the variant that amplifies rounding differences the most.
    args = [*TINY, "norm=none", "trainer.epochs=2"]
    runs = {}
    for name, env, extra in [
        ("as is", as_is, []),
        ("capped", capped, []),
        ("native", as_is, ["trainer.cpu_kernels=native"]),
    ]:
        result = run_cli(*args, *extra, f"paths.output_root={tmp_path / name}", env=env)
        assert result.returncode == 0, result.stderr
        runs[name] = _metrics_and_summary(tmp_path / name)
    (rows, summary), (capped_rows, capped_summary) = runs["as is"], runs["capped"]
    assert rows == capped_rows  # every number of every epoch, byte for byte
    assert summary["cpu_isa"] == capped_summary["cpu_isa"] == "AVX2"
    assert summary["trainer.cpu_kernels"] == "portable" and summary["trainer.cpu_threads"] == "2"
    native_rows, native = runs["native"]
    assert native["trainer.cpu_kernels"] == "native" and native["run_id"] != summary["run_id"]
    with open("/proc/cpuinfo") as f:
        expected = "AVX512" if "avx512f" in f.read().split() else "AVX2"
    assert native["cpu_isa"] == expected  # native really is the machine's own


def test_cpu_kernels_and_threads_identify_cpu_runs_only():
    portable = preflight.resolved(make_config(*TINY))
    native = preflight.resolved(make_config(*TINY, "trainer.cpu_kernels=native"))
    four = preflight.resolved(make_config(*TINY, "trainer.cpu_threads=4"))
    assert len({records.run_id(c) for c in (portable, native, four)}) == 3
    on_gpu = preflight.resolved(make_config(*TINY, "trainer.cpu_threads=4"), "cuda")
    assert on_gpu["trainer"]["cpu_kernels"] is None and on_gpu["trainer"]["cpu_threads"] is None
    assert records.run_id(on_gpu) == records.run_id(preflight.resolved(make_config(*TINY), "cuda"))
