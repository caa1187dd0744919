"""The CPU's kernels, chosen so that the same config gives the same bits on every x86 machine.

fp32 sums are ordered by the SIMD width of the kernels that compute them (AVX2 or AVX-512)
and by the number of threads they are split over, and the unnormalized variants amplify
such rounding differences into different accuracies. `trainer.cpu_kernels=portable` (the
default) therefore runs, on x86-64, the AVX2 code paths of oneDNN (convolutions), ATen
(elementwise ops, reductions) and MKL (matrix products, in its conditional-numerical-
reproducibility mode), which every x86-64 CPU since 2013 has, on a fixed number of
intra-op threads (`trainer.cpu_threads`). `native` keeps the machine's fastest kernels.

These libraries read their settings once, when they first compute, so the choice is made
before anything is computed: by the first check of a config in a process (preflight.check),
and it holds for that process (its worker processes inherit it). A process cannot switch
later; a run asking for the other kernels is refused in one line. No torch at import.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

from bnstudy.errors import ConfigError

KERNELS = ("portable", "native")


# The settings of the AVX2 code paths: oneDNN's ISA cap, ATen's dispatch level, and MKL's
# conditional numerical reproducibility at AVX2.
PORTABLE_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}


# Set with PORTABLE_ENV, so that a process (or a child) knows bnstudy set them, not the user.
CHOSEN_ENV = "BNSTUDY_CPU_KERNELS"


# torch.compile's kernels are cached by a key that ignores ATEN_CPU_CAPABILITY: kernels
# built for AVX-512 and reused under AVX2 gave NaNs. Portable runs get a cache of their own.
INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


@dataclass(frozen=True)
class CpuKernels:
    """What this process computes with on the CPU, for a run's summary."""

    isa: str  # ATen's dispatch level in use: AVX2, AVX512, DEFAULT, …
    threads: int
    cpu: str  # the processor, as the machine names it


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def resolved(kernels: str) -> str:
    """The kernels a CPU run computes with: portable has a meaning only on x86-64 (AVX2);
    elsewhere there is one kind of kernel, recorded as native."""
    return kernels if is_x86() else "native"


def choose(kernels: str, threads: int) -> CpuKernels:
    """Make this process compute with `kernels` on `threads` intra-op threads, before torch
    computes anything (see the module's docstring); ConfigError where it cannot."""
    if kernels not in KERNELS:
        raise ConfigError(f"trainer.cpu_kernels={kernels!r}; choose one of: {', '.join(KERNELS)}")
    kernels = resolved(kernels)
    ours = os.environ.get(CHOSEN_ENV)
    if kernels == "portable":
        os.environ.update(PORTABLE_ENV)
        cache = os.environ.get(INDUCTOR_CACHE_ENV) or _default_inductor_cache()
        os.environ[INDUCTOR_CACHE_ENV] = cache if cache.endswith("-avx2") else f"{cache}-avx2"
    elif ours == "portable":  # set by bnstudy (in this process or its parent): undo it
        for key in PORTABLE_ENV:
            os.environ.pop(key, None)
        os.environ.pop(INDUCTOR_CACHE_ENV, None)
    os.environ[CHOSEN_ENV] = kernels

    import torch

    torch.set_num_threads(threads)
    isa = torch.backends.cpu.get_cpu_capability()
    if kernels == "portable" and isa != "AVX2":
        if isa == "DEFAULT" or not _has("avx2"):
            raise ConfigError(
                "trainer.cpu_kernels=portable needs a CPU with AVX2, and this one has none; "
                "use trainer.cpu_kernels=native (its numbers are this machine's own)"
            )
        raise ConfigError(
            f"trainer.cpu_kernels=portable, but this process already computes with {isa} "
            "kernels (they are fixed when it first computes); run it in a process of its own"
        )
    if kernels == "native" and ours == "portable" and isa == "AVX2" and _has("avx512f"):
        raise ConfigError(
            "trainer.cpu_kernels=native, but this process already computes with the portable "
            "AVX2 kernels (they are fixed when it first computes); run native and portable "
            "configs in separate commands"
        )
    return current()


def current() -> CpuKernels:
    """The kernels and threads this process computes with now."""
    import torch

    return CpuKernels(torch.backends.cpu.get_cpu_capability(), torch.get_num_threads(), cpu_name())


def _has(flag: str) -> bool:
    """Whether the CPU announces `flag` (Linux's /proc/cpuinfo); False where it cannot tell."""
    try:
        return flag in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _default_inductor_cache() -> str:
    import getpass
    import tempfile

    return str(Path(tempfile.gettempdir()) / f"torchinductor_{getpass.getuser()}")
