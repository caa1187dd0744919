"""Per-layer diagnostics (layers.csv, bnstudy/training/diagnostics.py) against hand computations."""

from __future__ import annotations

import copy
import csv
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from bnstudy import session
from bnstudy.records import LayerStats, RunFolder
from bnstudy.results import main as results_main
from bnstudy.study.norms import NORM_LAYER_TYPES
from bnstudy.training.diagnostics import layer_stats, probe_of
from bnstudy.training.parts import build_model, build_parts
from tests.helpers import TINY, make_config, run_cli
from tests.test_run_status import interrupt_after_epoch

CPU = torch.device("cpu")


def _close(a: float | None, b: torch.Tensor | float) -> bool:
    return a is not None and math.isclose(a, float(b), rel_tol=1e-5, abs_tol=1e-6)


def _by_hand(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each site's output, computed block by block in training mode on a copy."""
    model = copy.deepcopy(model).train()
    with torch.no_grad():
        out = {"stem": model.stem(x)}
        h = out["stem"]
        for i, stage in enumerate(model.stages):
            for j, block in enumerate(stage):
                h = block(h)
                out[f"stages.{i}.{j}"] = h
        out["fc"] = model.fc(model.pool(h).flatten(1))
    return out


def _check_rows(model: nn.Module, x: torch.Tensor, rows: list[LayerStats]) -> None:
    by_name = {r.layer: r for r in rows}
    norms = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, NORM_LAYER_TYPES) and getattr(m, "weight", None) is not None
    ]
    assert {f"stem.{n[len('stem.') :]}" if n.startswith("stem") else n for n, _ in norms} <= set(
        by_name
    )
    for name, layer in norms:
        row = by_name[name]
        g, b = layer.weight.detach(), layer.bias.detach()
        assert row.kind == "norm" and row.channels == g.numel()
        assert _close(row.gamma_mean, g.mean()) and _close(row.gamma_std, g.std())
        assert _close(row.gamma_min, g.min()) and _close(row.gamma_max, g.max())
        assert _close(row.gamma_small, (g.abs() < 0.01).float().mean())
        assert _close(row.beta_mean, b.mean()) and _close(row.beta_std, b.std())
    for name, h in _by_hand(model, x).items():
        row = by_name[name]
        assert _close(row.act_mean, h.mean()) and _close(row.act_std, h.std()), name
        assert row.channels == h.shape[1]


def test_gamma_beta_activations_and_gradients_match_a_hand_computation():
    torch.manual_seed(0)
    model = build_model(make_config(*TINY, "model.width=4"))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator))
                m.weight[0] = 0.001  # a switched-off channel in every layer
                m.bias.copy_(torch.randn(m.bias.shape, generator=generator))
    x = torch.randn(16, 1, 28, 28, generator=generator)
    y = torch.arange(16) % 10
    nn.functional.cross_entropy(model(x), y).backward()  # gradients as a last step leaves them
    model.eval()
    running = {k: v.clone() for k, v in model.named_buffers()}

    rows = layer_stats(model, x, epoch=3)

    _check_rows(model, x, rows)
    assert all(r.epoch == 3 for r in rows)
    assert [r.depth for r in rows if r.kind == "block"] == list(range(1, 9))  # resnet18
    assert {r.stage for r in rows if r.kind == "block"} == {1, 2, 3, 4}
    small = [r.gamma_small for r in rows if r.kind == "norm"]
    assert all(s is not None and s > 0 for s in small)
    for row in rows:
        if row.kind == "block":
            block = model.get_submodule(row.layer)
            convs = [m.weight.grad for m in block.modules() if isinstance(m, nn.Conv2d)]
            assert _close(row.grad_norm, torch.sqrt(sum((g**2).sum() for g in convs)))
    # The probe changed nothing: the mode and the running statistics are as they were.
    assert not model.training
    for k, v in model.named_buffers():
        assert torch.equal(v, running[k]), k


@pytest.mark.kernels
@pytest.mark.slow
def test_a_runs_layers_csv_holds_init_and_every_epoch_as_its_model_computes(tmp_path):
    result = run_cli(*TINY, f"paths.output_root={tmp_path}")
    assert result.returncode == 0, result.stderr
    [folder] = [p.parent for p in tmp_path.rglob("summary.csv")]
    rows = RunFolder(folder).read_layers()
    assert sorted({r.epoch for r in rows}) == [0, 1, 2]
    with open(folder / "layers.csv", newline="") as f:
        head = next(csv.DictReader(f))
    assert head["run_id"] == RunFolder(folder).read_summary()["run_id"]  # identified as metrics

    at_init = [r for r in rows if r.epoch == 0]
    assert all(r.gamma_mean == 1 and r.gamma_std == 0 for r in at_init if r.kind == "norm")
    assert all(r.grad_norm is None for r in at_init)  # no step yet
    assert all(r.grad_norm > 0 for r in rows if r.epoch == 1 and r.kind != "norm")

    cfg = make_config(*TINY, f"paths.output_root={tmp_path}")
    parts = build_parts(cfg, CPU)
    parts.model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    x, _ = probe_of(parts, cfg)
    _check_rows(parts.model, x, [r for r in rows if r.epoch == 2])

    # results gathers every run's rows at the folder's root, and reads only the runs' files.
    assert results_main([str(tmp_path)]) == 0
    gathered = (tmp_path / "layers.csv").read_text().splitlines()
    assert len(gathered) == len(rows) + 1
    assert results_main([str(tmp_path)]) == 0
    assert (tmp_path / "layers.csv").read_text().splitlines() == gathered
    # In a run's own folder, its layers.csv is the record: left as it is.
    before = (folder / "layers.csv").read_bytes()
    assert results_main([str(folder)]) == 0
    assert (folder / "layers.csv").read_bytes() == before


def test_an_interrupted_or_torn_run_resumes_to_the_same_layers_csv(tmp_path, monkeypatch):
    cfg = make_config(*TINY, "trainer.epochs=3")
    session.execute(cfg, tmp_path / "straight")
    interrupt_after_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        session.execute(cfg, tmp_path / "resumed")
    monkeypatch.undo()
    # A crash while appending epoch 3's rows leaves part of a line (rows are appended).
    with open(tmp_path / "resumed" / "layers.csv", "a") as f:
        f.write("3e1a9b0c,fashion_mnist,resnet18,8,batchn")
    assert len(RunFolder(tmp_path / "resumed").read_layers()) > 0  # the torn line left out
    session.execute(cfg, tmp_path / "resumed")
    straight = (tmp_path / "straight" / "layers.csv").read_text()
    assert (tmp_path / "resumed" / "layers.csv").read_text() == straight
    assert sorted({r.epoch for r in RunFolder(tmp_path / "resumed").read_layers()}) == [0, 1, 2, 3]


def test_diagnostics_off_writes_no_layers_csv(tmp_path: Path):
    session.execute(make_config(*TINY, "trainer.diagnostics=false"), tmp_path)
    assert (tmp_path / "metrics.csv").is_file() and not (tmp_path / "layers.csv").exists()
