"""The layers of bnstudy, as its packages' docstrings state them: no module imports from a
layer above its own (lazy imports inside functions included), and each package's docstring
says what it may import."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import REPO

PACKAGE = REPO / "bnstudy"
# Bottom to top. A module may import from its own layer and the ones below it. The commands
# (run, session, results, evaluate, inspect, bench) are the top layer; errors sits low,
# because every layer raises its errors.
LAYERS = ("records", "errors", "data", "study", "training", "sweeps", "analysis", "config")
TOP = len(LAYERS)


def layer_of(module: str) -> int:
    """`bnstudy.training.loop` -> the training layer's rank; a top-level command -> TOP."""
    parts = module.split(".")
    if parts[0] != "bnstudy" or len(parts) == 1:
        return TOP
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else TOP


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def imported(path: Path) -> list[tuple[int, str]]:
    """Every bnstudy module `path` imports, anywhere in it, with the line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bnstudy"):
            if node.module == "bnstudy":  # from bnstudy import records: the names are modules
                found += [(node.lineno, f"bnstudy.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("bnstudy")]
    return found


def test_no_module_imports_from_a_layer_above_its_own():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = module_name(path)
        if own == "bnstudy":
            continue
        for line, other in imported(path):
            if layer_of(other) > layer_of(own):
                upward.append(f"{path.relative_to(REPO)}:{line}: {own} imports {other}")
    assert upward == [], "\n".join(upward)


def test_the_layers_are_the_packages_and_each_says_what_it_may_import():
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(LAYERS) - {"errors"}
    assert (PACKAGE / "errors.py").is_file()
    for name in packages:
        doc = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text()))
        assert doc and "Imports:" in doc, f"bnstudy/{name}/__init__.py: say what it may import"


def test_the_check_sees_an_upward_import(tmp_path):
    # The checker itself: a lazy import from a higher layer is found.
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from bnstudy.analysis import tables\n")
    assert [layer_of(m) for _, m in imported(probe)] == [LAYERS.index("analysis")]
    assert layer_of("bnstudy.records.keys") < layer_of("bnstudy.training.loop") < TOP
