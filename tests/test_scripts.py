"""The set-up scripts choose an interpreter pip may install into, on any Debian-like machine."""

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO


def python_chosen(workdir: Path, **env: str) -> str:
    """What scripts/env.sh sets PYTHON to when sourced in `workdir` with `env`."""
    shutil.copytree(REPO / "scripts", workdir / "scripts", dirs_exist_ok=True)
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "VIRTUAL_ENV")}
    result = subprocess.run(
        ["bash", "-c", "source scripts/env.sh && echo $PYTHON"],
        cwd=workdir,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_an_active_virtual_environment_is_used_as_it_is(tmp_path):
    assert python_chosen(tmp_path, VIRTUAL_ENV="/some/venv") == "python"
    assert not (tmp_path / ".venv").exists()


def test_an_existing_checkout_venv_is_reused(tmp_path):
    fake = tmp_path / ".venv" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert python_chosen(tmp_path) == ".venv/bin/python"


@pytest.mark.skipif(
    not glob.glob("/usr/lib/python3*/EXTERNALLY-MANAGED") or not Path("/usr/bin/python3").exists(),
    reason="needs a Debian-managed /usr/bin/python3 (PEP 668)",
)
def test_with_debians_own_python_a_venv_is_made_and_pip_may_install_there(tmp_path):
    # Debian's python3 first on PATH, as on a fresh Debian machine.
    chosen = python_chosen(tmp_path, PATH=f"/usr/bin:{os.environ['PATH']}")
    assert chosen == ".venv/bin/python"
    python = tmp_path / chosen
    check = "import sys; assert sys.prefix != sys.base_prefix; print(sys.base_prefix)"
    base = subprocess.run([python, "-c", check], capture_output=True, text=True, check=True)
    assert base.stdout.strip() == "/usr"
    # pip in the venv is not refused by PEP 668 (the system's would be).
    dry = subprocess.run(
        [python, "-m", "pip", "install", "--dry-run", "--no-index", "--no-deps", "pip"],
        capture_output=True,
        text=True,
    )
    assert "externally-managed-environment" not in dry.stderr
