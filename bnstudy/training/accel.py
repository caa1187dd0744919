"""Fast paths: mixed precision, channels_last, cudnn.benchmark and torch.compile; and the
deterministic kernels that make a GPU run repeat bit for bit.

Each is a `trainer.*` key. On a GPU the defaults ("auto"/null) pick the fastest choice whose
range cannot change a result (bf16, never fp16); on the CPU they pick fp32 and NCHW on every
processor, because the fast CPU choices depend on it: bf16 is native on some CPUs and
emulated on others, and oneDNN's channels_last convolutions hang or crash on AVX2-only CPUs
at small channel counts. A choice that cannot work on the device is
refused with a FastPathError.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used: the config checks run without it
    import torch
    from torch import nn


log = logging.getLogger(__name__)


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")


# oneDNN's channels_last convolution backward hangs or crashes (SIGSEGV, SIGABRT, SIGBUS) on
# AVX2-only CPUs when a layer has fewer than 8 channels (shared/repro/avx2_conv_backward.py).
CPU_CHANNELS_LAST_MIN_WIDTH = 8


class FastPathError(ValueError):
    """A fast-path choice that does not apply to the device; names the key and the fix."""


@dataclass(frozen=True)
class FastPaths:
    precision: str  # fp32, bf16 or fp16: resolved for the device
    channels_last: bool
    compile: str
    cudnn_benchmark: bool
    deterministic: bool = False  # CUDA: only deterministic cuDNN kernels, chosen without timing

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        import torch

        return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]

    @property
    def memory_format(self) -> torch.memory_format:
        import torch

        return torch.channels_last if self.channels_last else torch.contiguous_format


def resolve_precision(device: torch.device, precision: str) -> str:
    """The precision a run computes in: "auto" becomes bf16 on CUDA GPUs that support it and
    fp32 everywhere else, never fp16: fp16's range (65,504) is exceeded by the activations of
    deep unnormalized networks, which would then "diverge" because of the number format.

    This resolved value, never "auto", is part of a run's identity.
    """
    if precision != "auto":
        return precision
    if device.type == "cuda":
        import torch

        if torch.cuda.is_bf16_supported():
            return "bf16"
    return "fp32"


def resolve_fast_paths(
    device: torch.device,
    precision: str = "auto",
    channels_last: bool | None = None,
    compile: str = "none",
    cudnn_benchmark: bool = True,
    width: int = 64,
    deterministic: bool = False,
) -> FastPaths:
    """Turn the trainer's fast-path keys into concrete choices for `device` and a model of
    first-stage `width`."""
    if precision not in PRECISIONS:
        raise FastPathError(f"trainer.precision={precision!r}; choose one of {PRECISIONS}")
    if compile not in COMPILE_MODES:
        raise FastPathError(f"trainer.compile={compile!r}; choose one of {COMPILE_MODES}")
    precision = resolve_precision(device, precision)
    if precision == "fp16" and device.type != "cuda":
        raise FastPathError(
            f"trainer.precision=fp16 needs CUDA (its loss scaling); on {device.type} use bf16 "
            "or fp32"
        )
    if precision == "bf16" and device.type == "mps":
        raise FastPathError("trainer.precision=bf16 is not supported on mps; use fp32")
    if compile == "reduce-overhead" and device.type != "cuda":
        raise FastPathError(
            "trainer.compile=reduce-overhead captures CUDA graphs and needs CUDA; use default"
        )
    if channels_last is None:
        # NHWC feeds tensor cores on CUDA. On the CPU it measured within noise of NCHW (ResNet18
        # width 64 fp32 on an AVX2 CPU: 13.1 vs 12.1 images/s) and is the layout that crashes.
        channels_last = device.type == "cuda"
    if channels_last and device.type == "cpu" and width < CPU_CHANNELS_LAST_MIN_WIDTH:
        raise FastPathError(
            f"trainer.channels_last=true on the CPU needs model.width >= "
            f"{CPU_CHANNELS_LAST_MIN_WIDTH} (oneDNN's channels_last convolutions crash on AVX2 "
            f"CPUs below that, here model.width={width}); use trainer.channels_last=false"
        )
    # cudnn.benchmark times the candidate kernels in each process, so two processes (a run and
    # its resumed rest) may pick different ones and round differently: off when determinism is
    # asked for.
    cudnn_benchmark = cudnn_benchmark and not deterministic
    return FastPaths(precision, channels_last, compile, cudnn_benchmark, deterministic)


def fast_paths(cfg: Any, device: torch.device) -> FastPaths:
    """The trainer's fast-path keys of config `cfg` resolved for `device` (FastPathError)."""
    return resolve_fast_paths(
        device,
        cfg.trainer.precision,
        cfg.trainer.channels_last,
        cfg.trainer.compile,
        cfg.trainer.cudnn_benchmark,
        cfg.model.width,
        deterministic=cfg.trainer.deterministic,
    )


def apply_global_flags(paths: FastPaths, device: torch.device) -> None:
    if device.type == "cuda":
        import torch

        torch.backends.cudnn.benchmark = paths.cudnn_benchmark
        # Some of cuDNN's fastest kernels add in a different order on every call (atomics).
        torch.backends.cudnn.deterministic = paths.deterministic
        # TF32 only matters for fp32 steps; mixed precision does not use it.
        torch.backends.cuda.matmul.allow_tf32 = paths.precision != "fp32"
        torch.backends.cudnn.allow_tf32 = paths.precision != "fp32"


def prepare_model(model: nn.Module, paths: FastPaths) -> nn.Module:
    """The module to train with: `model` in the chosen memory format, compiled if asked.

    Checkpoints keep using `model` itself (a compiled wrapper renames every key).
    """
    import torch

    model.to(memory_format=paths.memory_format)
    if paths.compile == "none":
        return model
    log.info("compiling the model (torch.compile mode=%s); the first steps are slow", paths.compile)
    return torch.compile(model, mode=paths.compile)


def make_scaler(paths: FastPaths, device: torch.device) -> torch.amp.GradScaler | None:
    """Loss scaling for fp16, whose small range would flush small gradients to zero."""
    if paths.precision != "fp16":
        return None
    import torch

    return torch.amp.GradScaler(device.type)
