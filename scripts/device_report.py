"""The report of scripts/device_check.sh: what its steps left in the work folder, as one
markdown page and one CSV, with the GPU targets of docs/benchmarks.md met or missed by how much.

    python scripts/device_report.py env WORK                  # WORK/env.json: GPU, driver, torch
    python scripts/device_report.py report WORK OUT [--seconds S --budget B]

The work folder (device_check.sh writes it): steps.tsv (step, status, seconds, box, note),
env.json, data.env, bench/<step>.csv and <step>-profile.csv (python -m bnstudy.bench --out),
logs/<step>.log, cuda_tests.xml (pytest --junitxml), concurrent/{solo,pair}/ (run folders).
Standard library only, and torch for `env`.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import re
import shlex
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOT_MEASURED = "no CUDA device: not measured"

# The targets (docs/benchmarks.md, issue 20); measured by the bench, never in a timed test.
MIN_BS512_IMAGES_PER_S = 25_000  # ResNet18 width 64, batch 512, bf16, on an H100/H200
TARGET_GPUS = ("H100", "H200")
MIN_VS_REFERENCE = 3.0
MIN_BS16_SHARE = 0.25  # batch 16 with CUDA graphs, of batch 512's images/s
MAX_PAPER_GRID_HOURS = 2.0
GRIDS = ("paper", "lr_search", "paper_tuned")  # bnstudy.bench.ESTIMATED_GRIDS
# What each bench step measures (device_check.sh's step names).
BENCH_STEPS = {
    "bench_bs512": "batch 512, eager",
    "bench_bs16": "batch 16, eager",
    "bench_bs16_graphs": "batch 16, CUDA graphs (trainer.compile=reduce-overhead)",
    "bench_bs16_compile": "batch 16, trainer.compile=default",
}
PROFILED = {  # the profile that explains each target when it is missed
    "bench_bs512": "for images/s and the reference ratio at batch 512, the grid's lower bound",
    "bench_bs16": "for the grid's upper bound: small batches, eager",
    "bench_bs16_graphs": "for batch 16 with CUDA graphs against batch 512",
}


# ---------------------------------------------------------------------------------- env


def gpu_driver() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout else ""


def collect_env(work: Path) -> dict:
    """The machine, as the report heads it."""
    import os

    import torch

    env = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda or "",
        "cudnn": str(torch.backends.cudnn.version() or ""),
        "cpus": os.cpu_count(),
        "cuda": torch.cuda.is_available(),
        "gpu": "",
        "gpus": 0,
        "gpu_memory_gib": 0.0,
        "driver": "",
        "source": _source(),
    }
    if env["cuda"]:
        props = torch.cuda.get_device_properties(0)
        env.update(
            gpu=props.name,
            gpus=torch.cuda.device_count(),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            driver=gpu_driver(),
        )
    (work / "env.json").write_text(json.dumps(env, indent=1))
    return env


def _source() -> str:
    """The commit the kit was prepared from (.device/source.txt), or git's view here."""
    prepared = REPO / ".device" / "source.txt"
    if prepared.is_file():
        return prepared.read_text().strip()
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "log", "-1", "--format=%h %cs"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return f"commit {out.stdout.strip()}" if out.returncode == 0 else ""


# ------------------------------------------------------------------------- what steps left


@dataclass(frozen=True)
class Step:
    name: str
    status: str
    seconds: int
    box: int
    note: str

    @property
    def ran(self) -> bool:
        return self.status == "ok"


def read_steps(work: Path) -> dict[str, Step]:
    with open(work / "steps.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return {
        r["step"]: Step(r["step"], r["status"], int(r["seconds"]), int(r["box_s"]), r["note"])
        for r in rows
    }


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


GRID_LINE = re.compile(r"^(\w+) grid estimate: ([\d,]+) runs .* ≈ ([\d,.]+(?:e-\d+)?) h ", re.M)
DIAGNOSTICS_LINE = re.compile(
    r"^diagnostics \(layers\.csv, trainer\.diagnostics\) for norm=(\w+): ([\d,.]+) ms per "
    r"epoch = ([\d.]+)% of an epoch's training \(([\d,]+) images",
    re.M,
)


def number(text: str) -> float:
    return float(text.replace(",", ""))


@dataclass
class Bench:
    """One bench step's output: its CSV rows, grid estimates, diagnostics and profile."""

    step: str
    rows: list[dict[str, str]]
    grid_hours: dict[str, float]
    diagnostics: list[tuple[str, float, float, int]]  # norm, ms, % of an epoch, images
    profile: list[dict[str, str]]

    def bnstudy(self, norm: str | None = None) -> dict[str, str] | None:
        """The first bnstudy row (the configured norm), or the one of `norm`."""
        rows = [r for r in self.rows if r["path"] == "bnstudy"]
        rows = [r for r in rows if norm is None or r["norm"] == norm]
        return rows[0] if rows else None

    def images_per_s(self) -> float | None:
        row = self.bnstudy()
        return float(row["images_per_s"]) if row else None


def read_bench(work: Path, step: str) -> Bench | None:
    rows = read_csv(work / "bench" / f"{step}.csv")
    if not rows:
        return None
    log = work / "logs" / f"{step}.log"
    text = log.read_text(errors="replace") if log.is_file() else ""
    grid = {m[1]: number(m[3]) for m in GRID_LINE.finditer(text)}
    diagnostics = [
        (m[1], number(m[2]), float(m[3]), int(number(m[4])))
        for m in DIAGNOSTICS_LINE.finditer(text)
    ]
    profile = read_csv(work / "bench" / f"{step}-profile.csv")
    return Bench(step, rows, grid, diagnostics, profile)


@dataclass(frozen=True)
class TestCase:
    name: str
    outcome: str  # passed, failed, error, skipped
    message: str
    seconds: float


def read_tests(work: Path) -> list[TestCase]:
    path = work / "cuda_tests.xml"
    if not path.is_file():
        return []
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            found = case.find(kind)
            if found is not None:
                outcome = {"failure": "failed"}.get(kind, kind)
                message = (found.get("message") or "").strip().splitlines()[:1]
                message = message[0] if message else ""
                break
        cases.append(TestCase(case.get("name", "?"), outcome, message, float(case.get("time", 0))))
    return cases


LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[bnstudy\]\[\w+\] - (.*)$")


@dataclass
class Run:
    """One run of the concurrency step: when it trained, how fast, where."""

    name: str
    status: str
    device: str
    started: datetime | None
    ended: datetime | None
    images_per_s: float | None  # mean over the epochs after the first (warm-up)

    @property
    def seconds(self) -> float | None:
        if self.started is None or self.ended is None:
            return None
        return (self.ended - self.started).total_seconds()


def read_run(folder: Path) -> Run:
    summary = read_csv(folder / "summary.csv")[0]
    started = ended = None
    log = folder / "run.log"
    for line in log.read_text(errors="replace").splitlines() if log.is_file() else []:
        m = LOG_TIME.match(line)
        if not m:
            continue
        at = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f")
        if m[2].startswith("run ") and started is None:
            started = at  # the parts are built: training starts
        elif m[2].startswith("completed:"):
            ended = at
    speeds = [float(r["train_images_per_s"]) for r in read_csv(folder / "metrics.csv")[1:]]
    mean = sum(speeds) / len(speeds) if speeds else None
    return Run(
        f"seed {summary['seed']}", summary["status"], summary["device"], started, ended, mean
    )


def read_runs(root: Path) -> list[Run]:
    return sorted((read_run(p.parent) for p in root.rglob("summary.csv")), key=lambda r: r.name)


# ------------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Line:
    """One row of report.csv."""

    section: str
    item: str
    metric: str
    value: str
    unit: str = ""
    target: str = ""
    verdict: str = ""
    note: str = ""


def at_least(measured: float, wanted: float) -> str:
    if measured >= wanted:
        return f"met ({100 * (measured / wanted - 1):+.0f}%)"
    return f"MISSED by {100 * (1 - measured / wanted):.0f}% ({measured / wanted:.2f} of the target)"


def at_most(measured: float, wanted: float) -> str:
    if measured <= wanted:
        return f"met ({100 * (1 - measured / wanted):.0f}% under)"
    return f"MISSED by {measured - wanted:,.1f} h ({measured / wanted:.1f}× the target)"


def targets(env: dict, benches: dict[str, Bench]) -> list[Line]:
    """The four GPU targets, each met, missed by how much, or not measured."""
    big, small, graphs = (
        benches.get(s) for s in ("bench_bs512", "bench_bs16", "bench_bs16_graphs")
    )
    lines = []
    goal = f"≥ {MIN_BS512_IMAGES_PER_S:,} on an H100/H200"
    item = "ResNet18 w64, batch 512, bf16"
    if not env.get("cuda") or big is None or big.images_per_s() is None:
        lines.append(Line("target", item, "images/s", "", "", goal, _absent(env)))
    else:
        value = big.images_per_s()
        on_class = any(g in env["gpu"] for g in TARGET_GPUS)
        verdict = (
            at_least(value, MIN_BS512_IMAGES_PER_S)
            if on_class
            else (f"not an H100/H200 ({env['gpu']}): the target does not apply")
        )
        lines.append(Line("target", item, "images/s", f"{value:.0f}", "images/s", goal, verdict))
    goal = f"≥ {MIN_VS_REFERENCE:g}× the reference loop"
    ratio = big.bnstudy()["vs_reference"] if env.get("cuda") and big and big.bnstudy() else ""
    lines.append(
        Line(
            "target",
            item,
            "vs reference",
            ratio,
            "×",
            goal,
            at_least(float(ratio), MIN_VS_REFERENCE) if ratio else _absent(env),
        )
    )
    goal = f"≥ {MIN_BS16_SHARE:g} of batch 512's images/s"
    item = "ResNet18 w64, batch 16, bf16, CUDA graphs"
    if env.get("cuda") and big and graphs and big.images_per_s() and graphs.images_per_s():
        share = graphs.images_per_s() / big.images_per_s()
        verdict = at_least(share, MIN_BS16_SHARE)
        lines.append(
            Line(
                "target",
                item,
                "share of batch 512",
                f"{share:.3f}",
                "",
                goal,
                verdict,
                f"{graphs.images_per_s():.0f} images/s",
            )
        )
    else:
        lines.append(Line("target", item, "share of batch 512", "", "", goal, _absent(env)))
    lines.append(_grid_target(env, big, small))
    return lines


def _grid_target(env: dict, big: Bench | None, small: Bench | None) -> Line:
    """The paper grid's GPU-hours lie between the estimate at batch 512's throughput (every
    run as fast as the largest batch) and at batch 16's (as slow as the smallest)."""
    goal = f"≤ {MAX_PAPER_GRID_HOURS:g} GPU-hours"
    item = "paper grid, 80 runs × 100 epochs (bench estimate)"
    low = big.grid_hours.get("paper") if env.get("cuda") and big else None
    high = small.grid_hours.get("paper") if env.get("cuda") and small else None
    if low is None:
        return Line("target", item, "hours", "", "h", goal, _absent(env))
    span = f"{low:,.1f}" if high is None else f"{low:,.1f}–{high:,.1f}"
    note = "at batch 512's throughput" + ("" if high is None else " to batch 16's (eager)")
    if high is not None and high <= MAX_PAPER_GRID_HOURS:
        verdict = at_most(high, MAX_PAPER_GRID_HOURS)
    elif low > MAX_PAPER_GRID_HOURS:
        verdict = at_most(low, MAX_PAPER_GRID_HOURS) + " even at batch 512's speed"
    else:
        verdict = "undecided: the grid's batch sizes (16–256) lie between the two estimates"
    return Line("target", item, "hours", span, "h", goal, verdict, note)


def _absent(env: dict) -> str:
    return NOT_MEASURED if not env.get("cuda") else "not measured (the step did not finish)"


def step_times(bench: Bench) -> dict[str, float]:
    """ms per step of each norm bnstudy's rows measured."""
    return {r["norm"]: float(r["ms_per_step"]) for r in bench.rows if r["path"] == "bnstudy"}


def variant_spread(bench: Bench, variants: list[str]) -> float | None:
    """Slowest over fastest step time among `variants` (None with fewer than two timed)."""
    ms = step_times(bench)
    times = [ms[n] for n in variants if n in ms]
    return max(times) / min(times) if len(times) > 1 else None


# -------------------------------------------------------------------------------- report


def paper_variants() -> list[str]:
    """The paper's norm axis, as conf/experiment/paper.yaml sweeps it."""
    text = (REPO / "conf" / "experiment" / "paper.yaml").read_text()
    return re.search(r"^\s+norm: (.+)$", text, re.M)[1].strip().split(",")


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]


def _fmt(text: str, digits: int = 0) -> str:
    try:
        return f"{float(text):,.{digits}f}"
    except ValueError:
        return text


class Report:
    """Builds report.md and report.csv together, section by section."""

    def __init__(self, work: Path, seconds: int, budget: int) -> None:
        self.work = work
        self.env = (
            json.loads((work / "env.json").read_text())
            if (work / "env.json").is_file()
            else {"cuda": False}
        )
        self.steps = read_steps(work)
        self.benches = {s: b for s in BENCH_STEPS if (b := read_bench(work, s))}
        self.data = _read_data_env(work)
        self.seconds, self.budget = seconds, budget
        self.md: list[str] = []
        self.csv: list[Line] = []

    @property
    def smoke(self) -> bool:
        return not self.env.get("cuda")

    def build(self) -> None:
        self.header()
        self.target_section()
        self.throughput_section()
        self.grid_section()
        self.diagnostics_section()
        self.tests_section()
        self.concurrent_section()
        self.profile_section()
        self.steps_section()

    def header(self) -> None:
        e = self.env
        self.md += ["# bnstudy device check", ""]
        if e.get("cuda"):
            machine = (
                f"{e.get('gpu', '?')} ×{e.get('gpus', '?')} ({e.get('gpu_memory_gib', '?')} GiB, "
                f"driver {e.get('driver') or '?'})"
            )
        else:
            machine = "**no CUDA device**: nothing below is a GPU measurement"
        self.md.append(
            f"{e.get('date', '?')} · {machine} · torch {e.get('torch', '?')} (CUDA "
            f"{e.get('torch_cuda') or '-'}, cuDNN {e.get('cudnn') or '-'}) · Python "
            f"{e.get('python', '?')} · {e.get('cpus', '?')} CPU cores"
        )
        self.md += ["", f"Source: {e.get('source') or 'unknown'}.", ""]
        kind, root = self.data.get("CIFAR_KIND", ""), self.data.get("CIFAR", "")
        if kind == "synthetic":
            self.md.append(
                "Input: **synthetic CIFAR-10**: random uint8 images written in CIFAR-10's file "
                "format (the official python batches) by scripts/synthetic_cifar.py, 50,000 "
                "training images of 3×32×32 (the paper's input size): the throughput is "
                "CIFAR-10's, the accuracies mean nothing."
            )
        elif kind == "real":
            self.md.append(f"Input: CIFAR-10's files in {root}.")
        self.md += [
            "",
            f"Steps took {self.seconds} s of the {self.budget} s budget (each in its own time "
            "box; see Steps at the end).",
            "",
        ]
        for key in ("gpu", "driver", "torch", "torch_cuda", "cudnn", "python", "date"):
            self.csv.append(Line("machine", key, key, str(e.get(key, ""))))
        self.csv.append(Line("machine", "input", "cifar10", kind, note=root))

    def target_section(self) -> None:
        lines = targets(self.env, self.benches)
        self.csv += lines
        self.md += ["## Targets", ""]
        rows = [
            [
                f"{ln.item}: {ln.metric} {ln.target}",
                (f"{ln.value}{'' if ln.unit == '×' else ' '}{ln.unit}".strip() if ln.value else "-")
                + (f" ({ln.note})" if ln.note else ""),
                ln.verdict,
            ]
            for ln in lines
        ]
        self.md += table(["target", "measured", "verdict"], rows) + [""]
        if any("MISSED" in ln.verdict for ln in lines):
            self.md += [
                "Where a target is missed, the profiles below show where the time goes.",
                "",
            ]

    def throughput_section(self) -> None:
        self.md += ["## Throughput (ResNet18; `python -m bnstudy.bench`)", ""]
        if self.smoke:
            self.md += [
                f"{NOT_MEASURED}. The rows below are the CPU smoke runs of the same "
                "commands at tiny sizes: a check of the kit, not a measurement.",
                "",
            ]
        rows = []
        for step, bench in self.benches.items():
            for r in bench.rows:
                rows.append(
                    [
                        step,
                        r["path"],
                        r["norm"],
                        r["batch_size"],
                        r["width"],
                        r["precision"],
                        r["compile"],
                        _fmt(r["images_per_s"]),
                        _fmt(r["ms_per_step"], 2),
                        _fmt(r["peak_memory_mb"]),
                        r["vs_reference"] or "-",
                    ]
                )
                item = f"{step} {r['path']} norm={r['norm']}"
                for metric, unit in (
                    ("images_per_s", "images/s"),
                    ("ms_per_step", "ms"),
                    ("peak_memory_mb", "MiB"),
                    ("vs_reference", "×"),
                ):
                    note = "CPU smoke run, not a measurement" if self.smoke else r["device"]
                    self.csv.append(Line("throughput", item, metric, r[metric], unit, note=note))
        header = [
            "step",
            "path",
            "norm",
            "batch",
            "width",
            "precision",
            "compile",
            "images/s",
            "ms/step",
            "peak MiB",
            "vs reference",
        ]
        self.md += table(header, rows) if rows else ["No bench step finished."]
        self.md.append("")
        for step, what in BENCH_STEPS.items():
            if step not in self.benches:
                self.md.append(f"- {step} ({what}): {self.steps.get(step, _missing(step)).status}")
        self.md += [""] + self._variants() + [""]

    def _variants(self) -> list[str]:
        bench = self.benches.get("bench_bs512")
        paper = paper_variants()
        spread = variant_spread(bench, paper) if bench else None
        if spread is None:
            return []
        ms = step_times(bench)
        self.csv.append(
            Line(
                "variants",
                "batch 512: " + ",".join(paper),
                "slowest/fastest step time",
                f"{spread:.3f}",
            )
        )
        others = ", ".join(f"{n} {v:,.1f} ms" for n, v in ms.items() if n not in paper)
        return [
            f"The paper's {len(paper)} variants at batch 512: slowest/fastest step time = "
            f"**{spread:.3f}** ({', '.join(f'{n} {ms[n]:,.1f} ms' for n in paper if n in ms)})"
            + (f"; beside them {others}." if others else ".")
        ]

    def grid_section(self) -> None:
        rows = []
        for step, bench in self.benches.items():
            if bench.grid_hours:
                rows.append([BENCH_STEPS[step]] + [_hours(bench.grid_hours.get(g)) for g in GRIDS])
                for g in GRIDS:
                    if g in bench.grid_hours:
                        self.csv.append(
                            Line(
                                "grid",
                                f"{g} at {BENCH_STEPS[step]}",
                                "hours",
                                f"{bench.grid_hours[g]:.2f}",
                                "h",
                            )
                        )
        self.md += ["## Grid estimates (hours on this device, bench's FLOP-scaled estimate)", ""]
        if self.smoke:
            self.md += [f"{NOT_MEASURED}; below: the CPU smoke runs' figures (tiny sizes).", ""]
        self.md += table(["throughput measured at", *GRIDS], rows) if rows else ["None."]
        self.md += [
            "",
            "Each estimate runs the whole grid at one batch size's throughput; the "
            "grid's batch sizes (16–256) lie between batch 16's and batch 512's.",
            "",
        ]

    def diagnostics_section(self) -> None:
        self.md += ["## Diagnostics (`trainer.diagnostics`: one layers.csv record per epoch)", ""]
        bench = self.benches.get("bench_bs512")
        if bench is None or not bench.diagnostics:
            step = self.steps.get("bench_bs512", _missing("bench_bs512"))
            self.md += [f"bench_bs512: {step.status}", ""]
            return
        if self.smoke:
            self.md += [f"{NOT_MEASURED}; below: the CPU smoke run's figures.", ""]
        rows = []
        for norm, ms, share, images in bench.diagnostics:
            rows.append([norm, f"{ms:,.0f}", f"{share:.2f}%", f"{images:,}"])
            self.csv.append(
                Line(
                    "diagnostics",
                    f"batch 512 norm={norm}",
                    "share of an epoch",
                    f"{share:.3f}",
                    "%",
                    note=f"{ms:.1f} ms per record",
                )
            )
        self.md += table(["norm", "ms per record", "share of an epoch", "epoch images"], rows)
        self.md.append("")

    def tests_section(self) -> None:
        step = self.steps.get("cuda_tests", _missing("cuda_tests"))
        cases = read_tests(self.work)
        counts = {
            o: sum(c.outcome == o for c in cases) for o in ("passed", "failed", "error", "skipped")
        }
        summary = ", ".join(f"{n} {o}" for o, n in counts.items() if n) or "no results"
        self.md += ["## CUDA tests (`pytest -m cuda tests/test_cuda.py`)", ""]
        if self.smoke:
            self.md += [f"{NOT_MEASURED} ({summary}: they skip without a GPU).", ""]
        else:
            self.md += [f"{step.status}: {summary} in {step.seconds} s.", ""]
            self.md += table(
                ["test", "outcome", "message"], [[c.name, c.outcome, c.message] for c in cases]
            ) + [""]
        for c in cases:
            self.csv.append(Line("cuda_tests", c.name, "outcome", c.outcome, note=c.message))

    def concurrent_section(self) -> None:
        self.md += ["## Two concurrent runs on one GPU (`hydra/launcher=joblib`, n_jobs=2)", ""]
        step = self.steps.get("concurrent", _missing("concurrent"))
        solo = read_runs(self.work / "concurrent" / "solo")
        pair = read_runs(self.work / "concurrent" / "pair")
        gpus = self.env.get("gpus", 0)
        self.md.append(
            "bnstudy/sweeps/gpus.py gives each run a GPU of its own only where there are two or "
            "more; "
            f"here PyTorch sees {gpus}, so the two runs do not wait for each other: both train "
            "on the same GPU, which the driver time-slices between the two processes."
            if gpus == 1
            else f"PyTorch sees {gpus} GPUs: each run claims one (bnstudy/sweeps/gpus.py)."
            if gpus
            else f"{NOT_MEASURED}; the same two runs went through on the CPU at tiny sizes (a "
            "rehearsal of the launcher)."
        )
        self.md.append("")
        if len(pair) != 2 or not solo:
            self.md += [f"{step.status}: no pair of finished runs to compare.", ""]
            return
        rows = [
            [f"alone, {r.name}", r.status, r.device, _sec(r.seconds), _fmt(str(r.images_per_s))]
            for r in solo
        ]
        rows += [
            [f"together, {r.name}", r.status, r.device, _sec(r.seconds), _fmt(str(r.images_per_s))]
            for r in pair
        ]
        self.md += table(["run", "status", "device", "training s", "images/s (epochs 2+)"], rows)
        self.md += ["", self._overlap(solo[0], pair), ""]

    def _overlap(self, solo: Run, pair: list[Run]) -> str:
        a, b = pair
        if None in (a.started, a.ended, b.started, b.ended):
            return "Their run.log lacks the start or the end of training: no overlap measured."
        overlap = (min(a.ended, b.ended) - max(a.started, b.started)).total_seconds()
        shorter = min(a.seconds, b.seconds)
        share = max(overlap, 0) / shorter if shorter else 0
        together = sum(r.images_per_s or 0 for r in pair)
        alone = solo.images_per_s or 0
        way = "shared the device" if share > 0.5 else "mostly one after the other"
        self.csv += [
            Line(
                "concurrent", "pair", "overlap of training", f"{100 * share:.0f}", "%", verdict=way
            ),
            Line("concurrent", "pair", "images/s together", f"{together:.0f}", "images/s"),
            Line("concurrent", "solo", "images/s alone", f"{alone:.0f}", "images/s"),
        ]
        speed = f"{together:,.0f} images/s together against {alone:,.0f} alone"
        if alone:
            speed += f" ({together / alone:.2f}×: each run at {together / 2 / alone:.0%} of its "
            speed += "speed alone)"
        return (
            f"They trained at the same time for {max(overlap, 0):.1f} s ({share:.0%} of the "
            f"shorter run): they {way}. {speed}."
        )

    def profile_section(self) -> None:
        self.md += ["## Profiles (`bench --profile`: top kernels by GPU time, torch.profiler)", ""]
        missed = [ln for ln in self.csv if ln.section == "target" and "MISSED" in ln.verdict]
        if self.smoke:
            self.md += [
                f"{NOT_MEASURED}; the CPU smoke runs' top operators are in logs.tar.gz.",
                "",
            ]
            return
        self.md += [
            ("Missed: " + "; ".join(f"{ln.item} ({ln.metric})" for ln in missed) + ".")
            if missed
            else "Every measured target is met; the profiles for the record:",
            "",
        ]
        for step, why in PROFILED.items():
            bench = self.benches.get(step)
            if bench is None or not bench.profile:
                continue
            first = bench.profile[0]
            self.md += [
                f"### {BENCH_STEPS[step]}: {why}",
                "",
                f"Kernels kept the GPU busy {float(first['busy_pct']):.0f}% of "
                f"{float(first['wall_ms']):,.1f} ms over {first['steps']} steps.",
                "",
            ]
            rows = [
                [
                    _fmt(k["share_pct"], 1),
                    _fmt(k["total_ms"], 2),
                    k["calls"],
                    f"`{k['kernel'][:120]}`",
                ]
                for k in bench.profile
            ]
            self.md += table(["share %", "ms", "calls", "kernel"], rows) + [""]
            for k in bench.profile:
                self.csv.append(
                    Line(
                        "profile",
                        step,
                        k["kernel"],
                        k["share_pct"],
                        "%",
                        note=f"{k['total_ms']} ms, {k['calls']} calls",
                    )
                )

    def steps_section(self) -> None:
        self.md += ["## Steps (logs in logs.tar.gz)", ""]
        rows = [[s.name, s.status, str(s.seconds), str(s.box), s.note] for s in self.steps.values()]
        self.md += table(["step", "status", "seconds", "time box s", "note"], rows) + [""]
        for s in self.steps.values():
            self.csv.append(Line("step", s.name, "status", s.status, note=s.note))
            self.csv.append(Line("step", s.name, "seconds", str(s.seconds), "s"))

    def write(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text("\n".join(self.md).rstrip() + "\n")
        fields = list(Line.__dataclass_fields__)
        with open(out / "report.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(fields)
            writer.writerows([getattr(ln, k) for k in fields] for ln in self.csv)


def _missing(name: str) -> Step:
    return Step(name, "did not run", 0, 0, "")


def _hours(h: float | None) -> str:
    return "-" if h is None else f"{h:,.1f}"


def _sec(s: float | None) -> str:
    return "?" if s is None else f"{s:.1f}"


def _read_data_env(work: Path) -> dict[str, str]:
    path = work / "data.env"
    if not path.is_file():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k: (shlex.split(v) or [""])[0] for k, v in pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    env = sub.add_parser("env", help="write WORK/env.json")
    env.add_argument("work", type=Path)
    report = sub.add_parser("report", help="write OUT/report.md and OUT/report.csv")
    report.add_argument("work", type=Path)
    report.add_argument("out", type=Path)
    report.add_argument("--seconds", type=int, default=0, help="the steps' total time")
    report.add_argument("--budget", type=int, default=0, help="the steps' budget")
    args = parser.parse_args()
    if args.command == "env":
        print(json.dumps(collect_env(args.work)))
        return
    built = Report(args.work, args.seconds, args.budget)
    built.build()
    built.write(args.out)


if __name__ == "__main__":
    main()
