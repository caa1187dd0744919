"""Same config, same numbers, on every x86 CPU: portable defaults, precision in the identity,
and no native crash in PyTorch's CPU kernels at any width (AVX2 and AVX-512 alike)."""

import subprocess
import sys

import pytest
import torch

from bnstudy import preflight, records
from bnstudy.accel import resolve_fast_paths
from bnstudy.config import ConfigError, validate
from tests.conftest import REPO, TINY, make_config

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
from bnstudy.parts import build_parts
from bnstudy.train import train_step
from tests.conftest import TINY, make_config
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
