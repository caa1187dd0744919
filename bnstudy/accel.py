"""Fast paths: mixed precision, channels_last, cudnn.benchmark and torch.compile.

Each is a `trainer.*` key whose default ("auto"/null) picks the fastest correct choice for the
device; a choice that cannot work on the device is refused with a ConfigError.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class FastPathError(ValueError):
    """A fast-path choice that does not apply to the device; names the key and the fix."""


@dataclass(frozen=True)
class FastPaths:
    precision: str  # fp32, bf16 or fp16: resolved for the device
    channels_last: bool
    compile: str
    cudnn_benchmark: bool

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return _DTYPES[self.precision]

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def _cpu_has_bf16() -> bool:
    try:  # oneDNN's own check for native bf16 (AVX512-BF16 / AMX); private, so guarded
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_fast_paths(
    device: torch.device,
    precision: str = "auto",
    channels_last: bool | None = None,
    compile: str = "none",
    cudnn_benchmark: bool = True,
) -> FastPaths:
    """Turn the trainer's fast-path keys into concrete choices for `device`."""
    if precision not in PRECISIONS:
        raise FastPathError(f"trainer.precision={precision!r}; choose one of {PRECISIONS}")
    if compile not in COMPILE_MODES:
        raise FastPathError(f"trainer.compile={compile!r}; choose one of {COMPILE_MODES}")
    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        elif device.type == "cpu":
            # bf16 halves the step time where the CPU computes it natively, and costs
            # a lot where it is emulated.
            precision = "bf16" if _cpu_has_bf16() else "fp32"
        else:
            precision = "fp32"
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
        # NHWC feeds tensor cores on CUDA and oneDNN's fastest convolutions on the CPU.
        channels_last = device.type in ("cuda", "cpu")
    return FastPaths(precision, channels_last, compile, cudnn_benchmark)


def apply_global_flags(paths: FastPaths, device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = paths.cudnn_benchmark
        # TF32 only matters for fp32 steps; mixed precision does not use it.
        torch.backends.cuda.matmul.allow_tf32 = paths.precision != "fp32"
        torch.backends.cudnn.allow_tf32 = paths.precision != "fp32"


def prepare_model(model: nn.Module, paths: FastPaths) -> nn.Module:
    """The module to train with: `model` in the chosen memory format, compiled if asked.

    Checkpoints keep using `model` itself (a compiled wrapper renames every key).
    """
    model.to(memory_format=paths.memory_format)
    if paths.compile == "none":
        return model
    log.info("compiling the model (torch.compile mode=%s); the first steps are slow", paths.compile)
    return torch.compile(model, mode=paths.compile)


def make_scaler(paths: FastPaths, device: torch.device) -> torch.amp.GradScaler | None:
    """Loss scaling for fp16, whose small range would flush small gradients to zero."""
    if paths.precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)
