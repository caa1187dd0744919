"""A whole-batch loader on the training device, after airbench: the images live on the device
as one uint8 tensor, an epoch is one seeded `randperm`, and random crop, flip and normalization
are tensor ops on whole batches, with no per-image Python work.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from bnstudy.data.datasets import DatasetSpec, Split


class GpuLoader:
    """Batches of a split that lives on `device`: shuffled, augmented and normalized there.

    Randomness comes from `generator` (a CPU generator, so its state can be checkpointed and
    is the same on every device); one epoch draws its permutation, crop offsets and flips at
    once, then slices them per batch.
    """

    def __init__(
        self,
        split: Split,
        spec: DatasetSpec,
        batch_size: int,
        device: torch.device,
        train: bool,
        augment: bool = True,
        generator: torch.Generator | None = None,
        pad: int = 4,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> None:
        if train and generator is None:
            raise ValueError("a training loader needs a generator for shuffling")
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.spec = spec
        self.batch_size = batch_size
        self.device = device
        self.train = train
        self.augment = augment and train
        self.generator = generator
        self.pad = pad
        self.memory_format = memory_format
        view = (1, -1, 1, 1)
        # (x/255 − mean)/std folded into one multiply-add.
        std = torch.tensor(spec.std, device=device).view(view)
        self.scale = 1.0 / (255.0 * std)
        self.shift = -torch.tensor(spec.mean, device=device).view(view) / std

    def __len__(self) -> int:
        n = len(self.images)
        # Training drops the last partial batch: every step sees exactly `batch_size` images,
        # which matters in a study of batch size (and BatchNorm needs more than one).
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.images)
        if self.train:
            order = torch.randperm(n, generator=self.generator).to(self.device)
            if self.augment:
                shifts = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=self.generator).to(
                    self.device
                )
                flips = (torch.rand(n, generator=self.generator) < 0.5).to(self.device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            stop = min(start + self.batch_size, n)
            if self.train:
                idx = order[start:stop]
                x = self.images[idx]
                if self.augment:
                    x = random_crop(x, shifts[start:stop], self.pad)
                    x = torch.where(flips[start:stop].view(-1, 1, 1, 1), x.flip(3), x)
                y = self.labels[idx]
            else:
                x, y = self.images[start:stop], self.labels[start:stop]
            # clone, not contiguous: a 1-channel crop has channels_last strides that count as
            # contiguous, and convolutions would then run channels_last (the AVX2 crash).
            x = x.clone(memory_format=self.memory_format)
            yield torch.addcmul(self.shift, x.float(), self.scale), y


def random_crop(images: Tensor, shifts: Tensor, pad: int) -> Tensor:
    """Crop each image of the zero-padded batch at its own (dy, dx) offset in [0, 2·pad]."""
    b, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    rows = (shifts[:, 0:1] + torch.arange(h, device=images.device)).view(b, h, 1)
    cols = (shifts[:, 1:2] + torch.arange(w, device=images.device)).view(b, 1, w)
    batch = torch.arange(b, device=images.device).view(b, 1, 1)
    # Advanced indexing gathers B×H×W pixels with all channels: result is B×H×W×C.
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
