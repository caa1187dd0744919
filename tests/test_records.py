import csv
import os
import pickle
import subprocess
import sys

import pytest
import torch

from bnstudy import session
from bnstudy.records import (
    SUMMARY_COLUMNS,
    RecordsError,
    RunFolder,
    Summary,
    write_atomic,
    write_csv,
)
from bnstudy.study.norms import norm_parameters
from bnstudy.sweeps.gpus import claim_gpu
from bnstudy.training.parts import build_parts
from tests.helpers import TINY, make_config


def test_write_atomic_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "summary.csv"
    write_atomic(path, b"old\n")
    write_atomic(path, b"new\n")
    assert path.read_bytes() == b"new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.csv"]


def test_a_folder_holding_another_run_is_refused(tmp_path):
    folder = RunFolder(tmp_path)
    folder.write_summary({"run_id": "aaaa1111"}, Summary("completed"))
    folder.check_owner("aaaa1111")
    with pytest.raises(RecordsError, match="holds run 'aaaa1111', not 'bbbb2222'"):
        folder.check_owner("bbbb2222")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_checkpoints_are_loaded_without_unpickling_objects(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = RunFolder(tmp_path)
    torch.save({"epoch": 1, "payload": _Exploit()}, folder.checkpoint_path, pickle_module=pickle)
    with pytest.raises(RecordsError, match="refused: it holds objects other than tensors"):
        folder.load_checkpoint()
    assert not (tmp_path / "pwned").exists()


def test_checkpoint_round_trip_keeps_tensors_and_rng_states(tmp_path):
    folder = RunFolder(tmp_path)
    state = {"epoch": 3, "model": {"w": torch.arange(4.0)}, "rng": torch.get_rng_state()}
    folder.save_checkpoint(state)
    loaded = folder.load_checkpoint()
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["w"], torch.arange(4.0))
    assert torch.equal(loaded["rng"], state["rng"])


def test_the_lock_keeps_a_second_process_out_and_clears_stale_temporaries(tmp_path):
    (tmp_path / ".metrics.csv.tmp123").write_text("half a file")
    with RunFolder(tmp_path).lock() as first:
        assert first and not (tmp_path / ".metrics.csv.tmp123").exists()
        code = (
            "import sys; from pathlib import Path; from bnstudy.records import RunFolder\n"
            f"with RunFolder(Path({str(tmp_path)!r})).lock() as ok: sys.exit(0 if ok else 3)"
        )
        assert subprocess.run([sys.executable, "-c", code]).returncode == 3
    with RunFolder(tmp_path).lock() as again:
        assert again


def test_a_run_that_raises_is_recorded_as_failed_with_its_error(tmp_path, monkeypatch):
    def broken_fit(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access\nsecond line")

    monkeypatch.setattr(session, "fit", broken_fit)
    cfg = make_config(*TINY)
    with pytest.raises(RuntimeError):
        session.execute(cfg, tmp_path)
    with open(tmp_path / "summary.csv", newline="") as f:
        [row] = list(csv.DictReader(f))
    assert tuple(row)[-len(SUMMARY_COLUMNS) :] == SUMMARY_COLUMNS
    assert row["status"] == "failed"
    assert row["error"] == "RuntimeError: CUDA error: an illegal memory access"
    assert row["norm.name"] == "batchnorm" and row["epochs_done"] == "0"


def test_concurrent_runs_claim_different_gpus(tmp_path):
    with claim_gpu(2, tmp_path) as first, claim_gpu(2, tmp_path) as second:
        assert (first, second) == (0, 1)
    with claim_gpu(2, tmp_path) as again:
        assert again == 0  # released when the first run ended


def test_a_record_with_an_unknown_or_missing_field_is_an_error(tmp_path):
    with pytest.raises(TypeError):
        Summary("completed", best_test_acc=90.0)  # a field the summary does not have
    with pytest.raises(TypeError):
        Summary()  # no status
    with pytest.raises(ValueError, match=r"unknown fields \['typo'\], missing fields \['b'\]"):
        write_csv(tmp_path / "x.csv", ("a", "b"), [{"a": 1, "typo": 2}])
    assert not (tmp_path / "x.csv").exists()


def test_weight_decay_on_norm_parameters_is_its_own_key(tmp_path):
    """With optim.norm_weight_decay=0 a step with zero gradients leaves γ and β where they
    are and shrinks every other weight by lr·weight_decay."""
    for norm_decay, norm_shrinks in [("0", False), ("0.01", True)]:
        cfg = make_config(*TINY, "norm=affine", f"optim.norm_weight_decay={norm_decay}")
        parts = build_parts(cfg, torch.device("cpu"))
        model = parts.model
        with torch.no_grad():  # γ, β away from 1, 0 so that decay shows
            for p in norm_parameters(model):
                p.fill_(0.5)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        parts.optimizer.step()
        in_norms = {id(p) for p in norm_parameters(model)}
        for name, p in model.named_parameters():
            factor = 1 - 0.1 * (float(norm_decay) if id(p) in in_norms else 5e-4)
            torch.testing.assert_close(p.detach(), before[name] * factor)
            shrank = not torch.equal(p.detach(), before[name])
            assert shrank == (norm_shrinks if id(p) in in_norms else True), name
        assert len(in_norms) == 2 * 20  # γ and β of resnet18's 20 AffineLayers
