"""bnstudy: the shift and scale parameters of BatchNorm, studied with Hydra sweeps.

The packages are layers, bottom to top: records (a run's identity and files), errors, data,
study (the variants, ResNets, inits and controls), training, sweeps, analysis and config; the
commands (run, results, evaluate, inspect, bench) sit on top. A module imports only from its
own layer and those below (tests/test_layers.py); CONTRIBUTING.md has the map.
"""

import importlib.util
import sys

__version__ = "0.1.0"

# What every command needs, by import name and by the name pip installs it under.
_NEEDED = {
    "hydra": "hydra-core",
    "omegaconf": "omegaconf",
    "torch": "torch",
    "torchvision": "torchvision",
    "pandas": "pandas",
    "scipy": "scipy",
    "filelock": "filelock",
    "tqdm": "tqdm",
}


def _refuse_a_python_without_the_packages() -> None:
    """`python -m bnstudy.<command>` with a python that lacks the packages (the virtual
    environment not active): one line with the fix, not a ModuleNotFoundError traceback."""
    command = sys.orig_argv[sys.orig_argv.index("-m") + 1] if "-m" in sys.orig_argv else ""
    if not command.startswith("bnstudy."):
        return  # imported as a library: its imports raise as usual
    missing = [pip for name, pip in _NEEDED.items() if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"bnstudy: error: {sys.executable} lacks {', '.join(missing)}; activate the "
            "environment bnstudy is installed in (source .venv/bin/activate), or set one up "
            "with: bash scripts/setup.sh",
            file=sys.stderr,
        )
        sys.exit(2)


_refuse_a_python_without_the_packages()
