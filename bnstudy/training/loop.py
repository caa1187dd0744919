"""The epoch loop and evaluation. Knows nothing about files: records come back as values."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn
from tqdm import tqdm

from bnstudy.records import NUMBER_FORMAT, OPTIMIZATION, EpochMetrics
from bnstudy.study.init import state_kept

_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16"}


class Diverged(Exception):
    """The training loss became NaN or infinite; `reason` says whether the optimization did it
    or the number format (a forward pass non-finite only in fp16/bf16: see `diagnose`)."""

    def __init__(
        self, epoch: int, step: int, reason: str = OPTIMIZATION, message: str = ""
    ) -> None:
        super().__init__(message or f"non-finite training loss in epoch {epoch} at step {step}")
        self.epoch, self.step, self.reason = epoch, step, reason


@torch.no_grad()
def diagnose(
    model: nn.Module, x: Tensor, epoch: int, step: int, autocast_dtype: torch.dtype | None
) -> Diverged:
    """Why the loss went non-finite at `step`. In fp32: the optimization. Under fp16/bf16
    autocast: the number format when the weights are still finite (fp16's loss scaling skips
    the steps whose gradients are not) and give finite fp32 logits on `x`, the batch at hand;
    the optimization otherwise (the weights themselves blew up). bf16 has fp32's exponent
    range, so there it is nearly always the optimization."""
    where = f"epoch {epoch} at step {step}"
    if autocast_dtype is None:
        return Diverged(epoch, step, OPTIMIZATION, f"non-finite training loss in {where}")
    name = _NAMES.get(autocast_dtype, str(autocast_dtype))
    lost = "the weights are no longer finite"
    if all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        with state_kept(model):  # a training-mode pass that updates no running statistics
            if bool(torch.isfinite(model.train()(x.float())).all()):
                return Diverged(
                    epoch,
                    step,
                    NUMBER_FORMAT,
                    f"non-finite logits under {name} autocast in {where}; the same weights "
                    "give finite fp32 logits (number format, not optimization)",
                )
        lost = "the weights give non-finite logits in fp32 too"
    return Diverged(
        epoch,
        step,
        OPTIMIZATION,
        f"non-finite training loss under {name} autocast in {where}; {lost} (optimization)",
    )


def train_step(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    optimizer: torch.optim.Optimizer,
    autocast_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    clip_grad_norm: float | None = None,
) -> tuple[Tensor, Tensor]:
    """One optimizer step on (x, y); returns the loss and the count of correct predictions,
    both still on the device. With `clip_grad_norm` the gradients' total norm is clipped."""
    with autocast(x.device.type, autocast_dtype):
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        _clip(optimizer, clip_grad_norm)
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        # The step would unscale anyway; doing it here leaves the true gradients for clipping
        # and for the diagnostics (layers.csv), which read them after the epoch's last step.
        scaler.unscale_(optimizer)
        _clip(optimizer, clip_grad_norm)
        scaler.step(optimizer)
        scaler.update()
    return loss.detach(), (logits.argmax(1) == y).sum()


def _clip(optimizer: torch.optim.Optimizer, max_norm: float | None) -> None:
    if max_norm is not None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        nn.utils.clip_grad_norm_(params, max_norm)


def train_epoch(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    optimizer: torch.optim.Optimizer,
    epoch: int,
    log_every: int = 50,
    progress: bool = True,
    autocast_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    clip_grad_norm: float | None = None,
) -> tuple[float, float, int]:
    """One pass over `loader`; returns (mean loss, accuracy %, images). Raises Diverged, at
    the first step whose loss was not finite."""
    model.train()
    loss_sum = torch.zeros((), device=_device_of(model))
    correct = torch.zeros((), dtype=torch.long, device=loss_sum.device)
    first_bad = torch.zeros((), dtype=torch.long, device=loss_sum.device)  # 0: none yet
    seen = 0
    # disable=None: the bar stays quiet when output is not a terminal (logs, CI, SLURM).
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=None if progress else True)
    for step, (x, y) in enumerate(bar, start=1):
        loss, hits = train_step(model, x, y, optimizer, autocast_dtype, scaler, clip_grad_norm)
        # Sums stay on the device; reading them back every step would stall a GPU.
        loss_sum += loss * len(y)
        correct += hits
        seen += len(y)
        first_bad = torch.where((first_bad == 0) & ~torch.isfinite(loss), step, first_bad)
        if step % log_every == 0:
            running = loss_sum.item() / seen
            if not math.isfinite(running):
                raise diagnose(model, x, epoch, int(first_bad), autocast_dtype)
            bar.set_postfix(loss=f"{running:.4f}")
    mean_loss = loss_sum.item() / max(seen, 1)
    if not math.isfinite(mean_loss):
        raise diagnose(model, x, epoch, int(first_bad), autocast_dtype)
    return mean_loss, 100.0 * correct.item() / max(seen, 1), seen


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    autocast_dtype: torch.dtype | None = None,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (%) of `model` in eval mode over `loader`."""
    model.eval()
    loss_sum = torch.zeros((), device=_device_of(model))
    correct = torch.zeros((), dtype=torch.long, device=loss_sum.device)
    seen = 0
    for x, y in loader:
        with autocast(x.device.type, autocast_dtype):
            logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    return loss_sum.item() / max(seen, 1), 100.0 * correct.item() / max(seen, 1)


def fit(
    model: nn.Module,
    train_loader: Iterable[tuple[Tensor, Tensor]],
    val_loader: Iterable[tuple[Tensor, Tensor]] | None,
    test_loader: Iterable[tuple[Tensor, Tensor]],
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    epochs: int,
    start_epoch: int = 1,
    on_epoch_end: Callable[[EpochMetrics], None] | None = None,
    log_every: int = 50,
    progress: bool = True,
    autocast_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    clip_grad_norm: float | None = None,
) -> list[EpochMetrics]:
    """Train epochs `start_epoch..epochs`, evaluating on validation (if any) and test after
    each; raises Diverged."""
    history = []
    for epoch in range(start_epoch, epochs + 1):
        epoch_lr = optimizer.param_groups[0]["lr"]
        started = time.perf_counter()
        train_loss, train_acc, images = train_epoch(
            model,
            train_loader,
            optimizer,
            epoch,
            log_every,
            progress,
            autocast_dtype,
            scaler,
            clip_grad_norm,
        )
        train_seconds = time.perf_counter() - started
        val_loss = val_acc = None
        if val_loader is not None:
            val_loss, val_acc = evaluate(model, val_loader, autocast_dtype)
        test_loss, test_acc = evaluate(model, test_loader, autocast_dtype)
        schedule.step()
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=train_loss,
            train_acc=train_acc,
            val_loss=val_loss,
            val_acc=val_acc,
            test_loss=test_loss,
            test_acc=test_acc,
            epoch_lr=epoch_lr,
            epoch_seconds=time.perf_counter() - started,
            train_images_per_s=images / train_seconds,
        )
        history.append(metrics)
        if on_epoch_end is not None:
            on_epoch_end(metrics)
    return history


def autocast(device_type: str, dtype: torch.dtype | None) -> torch.autocast:
    """Mixed precision in `dtype`, or plain fp32 when dtype is None."""
    return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
