"""The docs stay true: their commands run, their links resolve, their keys and figures exist."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.docs_commands import (
    ROOT,
    Command,
    commands,
    doc_files,
    fill,
    is_python,
    runnable_blocks,
    same_error,
    tiny,
)

COMMAND_TIMEOUT_S = 300
WORKERS = 2  # pages run in parallel; the commands of one page in order


def _unrunnable(cmd: Command) -> bool:
    return cmd.tool is None


def test_every_command_block_is_run_or_says_why_not():
    problems = []
    for path in doc_files():
        for block in runnable_blocks(path):
            if block.not_run is not None:
                if not block.not_run:
                    problems.append(f"{block.where}: the marker gives no reason")
                continue
            cmds = commands(block)
            if not cmds:
                problems.append(f"{block.where}: a {block.lang} block without a command")
            for cmd in cmds:
                if _unrunnable(cmd):
                    problems.append(
                        f"{block.where}: `{' '.join(cmd.argv)}` is not a bnstudy command the "
                        "tests can run; mark the block <!-- not run: why -->"
                    )
    assert not problems, "\n".join(problems)


def test_tiny_rewrites_a_grid_to_a_few_runs():
    argv = "python -m bnstudy.run -m experiment=paper seed=0,1,2 model.width=64".split()
    assert tiny(argv)[3:] == [
        "-m",
        "experiment=paper",
        "seed=0,1",
        "model.width=8",
        "debug=fast",
        "model=resnet18",
        "batch_size=32",
        "norm=batchnorm,none",
    ]
    bench = "python -m bnstudy.bench model=resnet18 batch_size=512 --steps 50".split()
    assert tiny(bench)[3:] == [
        "model=resnet18",
        "batch_size=64",
        "--steps",
        "2",
        "debug=fast",
        "--warmup",
        "1",
        "--workers",
        "0",
    ]


# -- links ------------------------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _prose(path: Path) -> str:
    """The file without its fenced code blocks (links and headings there are not markdown)."""
    out, fenced = [], False
    for line in path.read_text().splitlines():
        if re.match(r"^\s*```", line):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return "\n".join(out)


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", _prose(path), re.M):
        slug = _slug(m[1])
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def test_every_relative_link_and_anchor_resolves():
    broken = []
    for path in doc_files():
        for m in LINK.finditer(_prose(path)):
            target = m[1]
            if re.match(r"^[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            if not dest.exists():
                broken.append(f"{path.relative_to(ROOT)}: {target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{path.relative_to(ROOT)}: {target}: no such heading")
    assert not broken, "\n".join(broken)


def test_every_page_of_the_guide_is_linked_from_the_readme_and_links_the_others():
    pages = sorted((ROOT / "docs").glob("*.md"))
    readme = (ROOT / "README.md").read_text()
    missing = [
        f"README.md does not link docs/{p.name}" for p in pages if f"docs/{p.name}" not in readme
    ]
    for page in pages:
        nav = page.read_text().splitlines()[0]
        missing += [
            f"docs/{page.name}'s nav bar does not link {other.name}"
            for other in pages
            if f"({other.name})" not in nav
        ]
        if "(../README.md)" not in nav:
            missing.append(f"docs/{page.name}'s nav bar does not link the README")
    assert not missing, "\n".join(missing)


def test_every_figure_shown_is_made_by_scripts_figures_sh():
    script = (ROOT / "scripts" / "figures.sh").read_text()
    shown = set()
    for path in doc_files():
        for m in LINK.finditer(_prose(path)):
            if m[1].endswith(".png"):
                shown.add(Path(m[1]).name)
    assert shown, "no figure found in the docs"
    unmade = sorted(name for name in shown if name not in script)
    assert not unmade, f"figures no script regenerates: {unmade}"


# -- config keys ------------------------------------------------------------------------------


def _composed(*overrides: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "bnstudy.run", "--cfg", "job", *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def _has(cfg: dict, dotted: str) -> bool:
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_every_key_of_the_configuration_reference_exists():
    text = (ROOT / "docs" / "configuration.md").read_text()
    section = text.split("## Every key, its default and why", 1)[1].split("\n## ", 1)[0]
    names = set()
    for row in re.finditer(r"^\| (.+?) \|", section, re.M):
        names.update(re.findall(r"`([a-z_][\w.]*)`", row[1]))
    assert len(names) > 40, f"the table was not found: {sorted(names)}"
    configs = [_composed(), _composed("optim=adam")]
    groups = {p.name for p in (ROOT / "conf").iterdir() if p.is_dir()}
    unknown = sorted(
        n
        for n in names
        if not any(_has(c, n) for c in configs) and not ("." not in n and n in groups)
    )
    assert not unknown, f"documented keys that the config does not have: {unknown}"


# -- the commands -----------------------------------------------------------------------------


def _gpu_here() -> bool:
    return shutil.which("nvidia-smi") is not None


def _cost(cmd: Command) -> int:
    """A rough weight: a bench measures each config in a fresh process, --variants four."""
    if cmd.tool == "bench":
        return 12 if "--variants" in cmd.argv else 3
    return 1


def _run_page(path: Path, scratch: Path) -> tuple[list[str], list[str]]:
    """Run a page's commands in order in its own folder; (failures, one line per command)."""
    cwd = scratch / path.stem
    cwd.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    failures, log = [], []
    for block in runnable_blocks(path):
        if block.not_run is not None:
            continue
        for cmd in commands(block):
            if block.lang == "console" and "device=cuda" in cmd.argv and _gpu_here():
                continue
            try:
                argv = fill(tiny(cmd.argv) if block.lang == "bash" else cmd.argv, cwd)
            except LookupError as e:
                failures.append(f"{block.where}: {' '.join(cmd.argv)}\n  {e}")
                continue
            argv = [sys.executable, *argv[1:]] if is_python(argv[0]) else argv
            if cmd.tool == "bench_results":
                argv[1] = str(ROOT / argv[1])
            start = time.monotonic()
            try:
                out = subprocess.run(
                    argv, cwd=cwd, env=env, capture_output=True, text=True,
                    timeout=COMMAND_TIMEOUT_S,
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                failures.append(f"{block.where}: {' '.join(argv[1:])}\n  timed out")
                continue
            took = time.monotonic() - start
            log.append(f"{took:6.1f} s  {block.where}: {' '.join(argv[1:])}")
            print(log[-1], flush=True)
            shown_error = next((e for e in cmd.expected if e.startswith("bnstudy: error:")), None)
            printed = (out.stdout + out.stderr).strip().splitlines()
            tail = "\n  ".join(printed[-8:])
            if shown_error is not None:
                if out.returncode != 2 or not any(same_error(shown_error, p) for p in printed):
                    failures.append(
                        f"{block.where}: {' '.join(cmd.argv)}\n  shown: {shown_error}\n"
                        f"  exit {out.returncode}:\n  {tail}"
                    )
            elif out.returncode != 0:
                failures.append(
                    f"{block.where}: {' '.join(argv[1:])}\n  exit {out.returncode}:\n  {tail}"
                )
    return failures, log


@pytest.mark.slow
def test_a_documented_command_with_a_wrong_key_fails_the_check(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "```bash\npython -m bnstudy.run model.widht=8\n```\n\n"
        "```console\n$ python -m bnstudy.run optim.lr=nan\nbnstudy: error: something else\n```\n"
    )
    failures, log = _run_page(page, tmp_path / "scratch")
    assert len(log) == 2
    assert len(failures) == 2
    assert "Key 'widht' not in 'ModelConfig'" in failures[0]
    assert "shown: bnstudy: error: something else" in failures[1]


@pytest.mark.slow
def test_every_documented_command_runs_at_tiny_scale(tmp_path):
    pages = [p for p in doc_files() if any(b.not_run is None for b in runnable_blocks(p))]
    # The longest chains first, so the two workers finish together.
    pages.sort(key=lambda p: -sum(_cost(c) for b in runnable_blocks(p) for c in commands(b)))
    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(lambda p: _run_page(p, tmp_path), pages))
    failures = [f for page_failures, _ in results for f in page_failures]
    timings = [line for _, log in results for line in log]
    assert timings, "no documented command was run"
    assert not failures, "\n\n".join(failures)
