"""The device check's kit (scripts/device_*.sh, synthetic_cifar.py, device_report.py): its
input reads as CIFAR-10, and its report judges the GPU targets from the bench's real output."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from bnstudy.bench import ESTIMATED_GRIDS
from bnstudy.data.datasets import read_cifar10, torchvision_cifar10
from tests.helpers import REPO, TINY


def script(name: str):
    """scripts/<name>.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


report = script("device_report")


def test_synthetic_cifar_reads_as_cifar10_in_bnstudy_and_in_torchvision(tmp_path):
    folder = script("synthetic_cifar").write_synthetic_cifar(tmp_path, per_batch=20)
    assert (folder / "SYNTHETIC.txt").is_file()
    train, test = read_cifar10(tmp_path, download=False)
    assert tuple(train.images.shape) == (100, 3, 32, 32) and len(test.labels) == 20
    assert 0 <= int(train.labels.min()) and int(train.labels.max()) <= 9
    # The reference loop's reader: torchvision's, which wants Python 2 strings as keys.
    reference = torchvision_cifar10(tmp_path, tmp_path, None)
    image, label = reference[7]
    assert len(reference) == 100 and label == int(train.labels[7])
    assert np.array_equal(np.asarray(image).transpose(2, 0, 1), train.images[7].numpy())


def bench(step: str, images_per_s: float, vs_reference: str = "", paper_hours: float = 1.0):
    row = {"path": "bnstudy", "norm": "batchnorm", "images_per_s": str(images_per_s),
           "vs_reference": vs_reference}  # fmt: skip
    return report.Bench(step, [row], {"paper": paper_hours}, [], [])


H200 = {"cuda": True, "gpu": "NVIDIA H200"}


def verdicts(env, **benches) -> list[str]:
    return [line.verdict for line in report.targets(env, benches)]


def test_the_report_says_by_how_much_a_target_is_missed():
    big = bench("bench_bs512", 20_000, vs_reference="3.3", paper_hours=1.5)
    small = bench("bench_bs16", 6_000, paper_hours=2.5)
    graphs = bench("bench_bs16_graphs", 6_000)
    got = verdicts(H200, bench_bs512=big, bench_bs16=small, bench_bs16_graphs=graphs)
    assert got[0] == "MISSED by 20% (0.80 of the target)"
    assert got[1] == "met (+10%)"
    assert got[2] == "met (+20%)"  # 6,000 of 20,000 against a quarter
    assert got[3].startswith("undecided")  # 1.5 h at batch 512's speed, 2.5 h at batch 16's
    slow = bench("bench_bs16", 500, paper_hours=30.0)
    got = verdicts(H200, bench_bs512=bench("bench_bs512", 30_000, "3", 2.5), bench_bs16=slow)
    assert got[3] == "MISSED by 0.5 h (1.2× the target) even at batch 512's speed"
    assert verdicts({"cuda": True, "gpu": "NVIDIA A100"}, bench_bs512=big)[0].startswith(
        "not an H100/H200"
    )


def test_without_cuda_every_target_is_not_measured():
    big = bench("bench_bs512", 100, vs_reference="1.5")
    assert verdicts({"cuda": False}, bench_bs512=big) == [report.NOT_MEASURED] * 4


def test_the_variants_spread_is_over_the_papers_four():
    rows = [{"path": "bnstudy", "norm": n, "ms_per_step": str(ms)}
            for n, ms in [("batchnorm", 20), ("affine", 18), ("bnminus", 19), ("none", 16),
                          ("groupnorm", 40)]]  # fmt: skip
    rows.append({"path": "reference", "norm": "batchnorm", "ms_per_step": "60"})
    paper = report.paper_variants()
    assert paper == ["batchnorm", "affine", "bnminus", "none"]
    spread = report.variant_spread(report.Bench("bench_bs512", rows, {}, [], []), paper)
    assert spread == pytest.approx(20 / 16)


@pytest.mark.slow
def test_the_report_reads_the_bench_as_it_prints_and_writes(tmp_path):
    """The real bench (tiny, CPU, with --profile) in a work folder as device_check.sh lays it
    out, read as if a GPU had run it."""
    work = tmp_path / "work"
    for sub in ("bench", "logs"):
        (work / sub).mkdir(parents=True)
    args = [*TINY, "batch_size=32", "--steps", "2", "--warmup", "1", "--workers", "0",
            "--profile", "3", "--out", str(work / "bench" / "bench_bs512.csv")]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "bnstudy.bench", *args],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (work / "logs" / "bench_bs512.log").write_text(result.stdout)
    (work / "steps.tsv").write_text(
        "step\tstatus\tseconds\tbox_s\tnote\nbench_bs512\tok\t9\t100\t\n"
    )
    (work / "env.json").write_text(json.dumps({**H200, "gpus": 1}))

    read = report.read_bench(work, "bench_bs512")
    assert [r["path"] for r in read.rows] == ["bnstudy", "reference"]
    assert set(read.grid_hours) == set(ESTIMATED_GRIDS) == set(report.GRIDS)
    assert all(h > 0 for h in read.grid_hours.values())
    [(norm, ms, share, images)] = read.diagnostics
    assert norm == "batchnorm" and ms > 0 and share > 0 and images == 192
    assert len(read.profile) == 3 and float(read.profile[0]["share_pct"]) > 0

    built = report.Report(work, seconds=9, budget=450)
    built.build()
    built.write(tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| ResNet18 w64, batch 512, bf16: images/s ≥ 25,000 on an H100/H200 |" in text
    assert "MISSED by" in text and "### batch 512, eager" in text
    lines = (tmp_path / "out" / "report.csv").read_text().splitlines()
    assert lines[0] == "section,item,metric,value,unit,target,verdict,note"
