"""What a run records beside metrics.csv, each when asked, none changing a result:
layers.csv (trainer.diagnostics, bnstudy/training/diagnostics.py) and TensorBoard scalars of every
epoch's metrics (trainer.tensorboard; the CSV files stay the record).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from omegaconf import DictConfig

from bnstudy.records import EpochMetrics, RunFolder
from bnstudy.training.diagnostics import layer_stats, probe_of
from bnstudy.training.parts import Parts

TENSORBOARD_DIR = "tensorboard"


class Observers:
    """Made once the run knows where it starts (`start_epoch`); `epoch_end` after each epoch's
    metrics are written and before its checkpoint, so a resume repeats exactly the epochs
    whose records it drops."""

    def __init__(
        self,
        cfg: DictConfig,
        parts: Parts,
        folder: RunFolder,
        ident: dict[str, Any],
        start_epoch: int,
    ) -> None:
        self.model, self.folder, self.ident = parts.model, folder, ident
        self.probe = None
        if cfg.trainer.diagnostics:
            self.probe, _ = probe_of(parts, cfg)
            if start_epoch == 1:
                layers = layer_stats(self.model, self.probe, epoch=0)
            else:  # rows written after the checkpoint are computed again
                layers = [r for r in folder.read_layers() if r.epoch < start_epoch]
            folder.write_layers(ident, layers)
        self.board = None
        if cfg.trainer.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.board = SummaryWriter(str(folder.path / TENSORBOARD_DIR))

    def epoch_end(self, m: EpochMetrics) -> None:
        if self.probe is not None:
            self.folder.append_layers(self.ident, layer_stats(self.model, self.probe, m.epoch))
        if self.board is not None:
            for name, value in asdict(m).items():
                if name != "epoch" and value is not None:
                    self.board.add_scalar(name, value, global_step=m.epoch)
            self.board.flush()

    def close(self) -> None:
        if self.board is not None:
            self.board.close()
