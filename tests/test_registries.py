"""One table per kind, and every entry reachable from the CLI: the YAML choices of each config
group are exactly the table's keys, and each composes and validates."""

import subprocess
import sys

import pytest

from bnstudy.config.checks import validate
from bnstudy.data.datasets import DATASETS
from bnstudy.study.models import RESNETS
from bnstudy.study.norms import NORMS
from bnstudy.training.optim import OPTIMIZERS, SCHEDULES
from tests.helpers import CONF, REPO, TINY, make_config

GROUPS = {"norm": NORMS, "model": RESNETS, "dataset": DATASETS, "optim": OPTIMIZERS}


@pytest.mark.parametrize("group", GROUPS)
def test_a_groups_yaml_choices_are_its_tables_keys(group):
    assert sorted(p.stem for p in (CONF / group).glob("*.yaml")) == sorted(GROUPS[group])


CHOICES = [(g, name) for g, table in GROUPS.items() for name in table]
CHOICES += [("optim.schedule", name) for name in SCHEDULES]


@pytest.mark.parametrize(("group", "name"), CHOICES)
def test_every_entry_composes_and_validates(group, name):
    cfg = make_config(*TINY, f"{group}={name}")
    validate(cfg)
    key = group if "." in group else f"{group}.name"
    assert cfg[key.split(".")[0]][key.split(".")[1]] == name


def test_help_lists_every_choice_and_no_schema():
    result = subprocess.run(
        [sys.executable, "-m", "bnstudy.run", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    groups = result.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    for group, table in GROUPS.items():
        [line] = [x for x in groups.splitlines() if x.startswith(f"{group}:")]
        assert sorted(line.split(":", 1)[1].replace(",", " ").split()) == sorted(table), line
    assert "_schema" not in result.stdout
