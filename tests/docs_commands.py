"""The commands shown in README.md and docs/*.md, and how tests/test_docs.py runs them small.

Every ```bash or ```console block of the docs is either run or carries, on the line before it,
a marker that says why not: ``<!-- not run: needs a GPU -->``. A bash block's commands are run
in order, each page in its own scratch folder (so `outputs/...` in a later command is what an
earlier one wrote), rewritten to a tiny scale by `tiny()`; a console block's ``$`` lines are
run as shown and must print the error the doc shows.
"""

from __future__ import annotations

import glob
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN_LANGS = ("bash", "console")
MARKER = re.compile(r"^\s*<!--\s*not run:\s*(?P<reason>.*?)\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w-]*)\s*$")

# Tiny scale: keys whose documented values are replaced, and sweep dimensions added to a grid
# that does not name them (one model, two variants, one batch size and seed).
SIZE_KEYS = {"model.width": "8", "trainer.epochs": "2", "hydra.launcher.n_jobs": "2"}
MAX_BATCH_SIZE = 64  # debug=fast trains on 192 images
MAX_SWEPT = 2  # a grid's dimension keeps its first two values (seed=0,1,2 runs seeds 0 and 1)
TINY_GRID = {"model": "resnet18", "batch_size": "32", "seed": "0"}
TINY_NORMS = "norm=batchnorm,none"
TINY_ABLATIONS = "ablation=batchnorm,none_lsuv"
TINY_LRS = "optim.lr=0.05,0.1"
BENCH_FLAGS = {"--steps": "2", "--warmup": "1", "--profile": "3", "--workers": "0"}
BENCH_RESULTS_FLAGS = {"--runs": "3", "--epochs": "2", "--layers": "2"}
# Placeholders in documented commands, filled from what the page's earlier commands made.
PLACEHOLDERS = ("RUN_DIR", "DIR")


def doc_files() -> list[Path]:
    """README.md, CONTRIBUTING.md and every page of docs/, in reading order."""
    files = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [f for f in files if f.exists()]


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    not_run: str | None  # the marker's reason, None when the block is to be run

    @property
    def where(self) -> str:
        path = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{path}:{self.line}"


@dataclass
class Command:
    block: Block
    argv: list[str]
    expected: list[str] = field(default_factory=list)  # console blocks: the lines shown

    @property
    def tool(self) -> str | None:
        """`run`, `results`, … for `python -m bnstudy.X`; `bench_results`; None otherwise."""
        a = self.argv
        if not a or not is_python(a[0]):
            return None
        if len(a) >= 3 and a[1] == "-m" and a[2].startswith("bnstudy.") and a[2].count(".") == 1:
            return a[2].split(".", 1)[1]
        if len(a) >= 2 and a[1] == "scripts/bench_results.py":
            return "bench_results"
        return None


def is_python(word: str) -> bool:
    """`python`, `python3`, `.venv/bin/python`: the environment scripts/setup.sh made."""
    return Path(word).name in ("python", "python3")


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a markdown file (any language), with their markers."""
    out: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang, body = i, m["lang"], []
        i += 1
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            body.append(lines[i][len(m["indent"]) :])
            i += 1
        i += 1
        prev = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(prev)
        out.append(
            Block(path, start + 1, lang, "\n".join(body), marker["reason"] if marker else None)
        )
    return out


def runnable_blocks(path: Path) -> list[Block]:
    return [b for b in blocks(path) if b.lang in RUN_LANGS]


def commands(block: Block) -> list[Command]:
    """The commands of a bash block (continuations joined, comments dropped) or console block."""
    if block.lang == "console":
        out: list[Command] = []
        for line in block.text.splitlines():
            if line.startswith("$ "):
                out.append(Command(block, shlex.split(line[2:], comments=True)))
            elif out and line.strip():
                out[-1].expected.append(line)
        return out
    joined = block.text.replace("\\\n", " ")
    argvs = (shlex.split(line, comments=True) for line in joined.splitlines())
    return [Command(block, argv) for argv in argvs if argv]


def _key(arg: str) -> str | None:
    return arg.split("=", 1)[0].lstrip("+~") if "=" in arg and not arg.startswith("-") else None


def _set(args: list[str], key: str, value: str) -> list[str]:
    return [f"{key}={value}" if _key(a) == key else a for a in args]


def _cap_batch(value: str) -> str:
    sizes = []
    for v in value.split(","):
        size = str(min(int(v), MAX_BATCH_SIZE)) if v.isdigit() else v
        if size not in sizes:
            sizes.append(size)
    return ",".join(sizes)


def _first_values(arg: str) -> str:
    key = _key(arg)
    if key is None or key.startswith("hydra"):
        return arg
    return f"{key}={','.join(arg.split('=', 1)[1].split(',')[:MAX_SWEPT])}"


def _flags(args: list[str], flags: dict[str, str], append: tuple[str, ...] = ()) -> list[str]:
    """Replace the values of `flags` that args give, and add those of `append` it does not."""
    out = list(args)
    for i, a in enumerate(out[:-1]):
        if a in flags:
            out[i + 1] = flags[a]
    for flag in append:
        if flag not in out:
            out += [flag, flags[flag]]
    return out


def tiny(argv: list[str]) -> list[str]:
    """A documented command rewritten to run in seconds on a CPU (see the module docstring)."""
    cmd = Command(Block(ROOT, 0, "bash", "", None), argv)
    tool, head, args = cmd.tool, argv[:3], argv[3:]
    if tool == "bench_results":
        return argv[:2] + _flags(argv[2:], BENCH_RESULTS_FLAGS)
    if tool not in ("run", "inspect", "bench") or "--help" in args or "--cfg" in args:
        return argv
    keys = {_key(a) for a in args}
    for key, value in SIZE_KEYS.items():
        args = _set(args, key, value)
    if "data.val_size" in keys:
        vals = [a.split("=", 1)[1] for a in args if _key(a) == "data.val_size"]
        args = _set(args, "data.val_size", "0" if vals == ["0"] else "64")
    for a in list(args):
        if _key(a) == "batch_size":
            args = _set(args, "batch_size", _cap_batch(a.split("=", 1)[1]))
    if "debug" not in keys:
        args.append("debug=fast")
    if tool == "bench":
        args = _flags(args, BENCH_FLAGS, append=("--steps", "--warmup", "--workers"))
    if "-m" in args or "--multirun" in args:
        args = [_first_values(a) for a in args]
        args += [f"{k}={v}" for k, v in TINY_GRID.items() if k not in keys]
        if "norm" not in keys and "ablation" not in keys:
            args.append(TINY_ABLATIONS if "experiment=ablations" in args else TINY_NORMS)
        searches = "experiment=lr_search" in args or "tuning=search" in args
        if searches and "optim.lr" not in keys:
            args.append(TINY_LRS)
    return head + args


def fill(argv: list[str], cwd: Path) -> list[str]:
    """Placeholders and globs filled from the scratch folder `cwd` (what earlier commands made)."""
    out: list[str] = []
    for a in argv:
        if a == "RUN_DIR":
            done = sorted(cwd.rglob("model.pt"), key=lambda p: p.stat().st_mtime)
            if not done:
                raise LookupError("RUN_DIR: no completed run made by the page's earlier commands")
            out.append(str(done[-1].parent))
        elif a == "DIR":
            out.append("outputs")
        elif any(c in a for c in "*?[") and "=" not in a:
            matches = sorted(glob.glob(a, root_dir=cwd))
            if not matches:
                raise LookupError(f"{a} matches nothing made by the page's earlier commands")
            out += matches
        else:
            out.append(a)
    return out


DIGITS = re.compile(r"\d+(?:[.,]\d+)*")


def same_error(shown: str, printed: str) -> bool:
    """The doc's error line against the printed one, numbers aside (memory, paths' hashes)."""
    return DIGITS.sub("N", shown.strip()) == DIGITS.sub("N", printed.strip())
