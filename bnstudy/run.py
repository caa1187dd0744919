"""The train/eval entrypoint: `python -m bnstudy.run norm=affine model=resnet50`.

Thin on purpose: the command line (Hydra's, with its mistakes said in one line) -> config ->
checks (preflight.py, before the run folder exists) -> one run's lifecycle (session.py) ->
the outcome, also in the sweep's ledger. Nothing here imports torch: `--help`, `--cfg` and a
refused value answer before it would load.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra._internal.utils import get_args_parser
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from bnstudy.config import preflight
from bnstudy.config.schema import CONF_DIR
from bnstudy.errors import (
    PROG,
    USER_ERRORS,
    ConfigError,
    DatasetError,
    exit_with,
    first_line,
    one_line,
)
from bnstudy.sweeps.report import record_job
from bnstudy.sweeps.stopping import EXIT_INTERRUPTED

log = logging.getLogger("bnstudy")

EXIT_LOCKED = 3  # another process is training this run right now


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> str:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    # In a sweep one run's failure must not stop the others: it is recorded (summary.csv,
    # run.log, the sweep's ledger) and reported when the sweep ends.
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    from bnstudy.session import Outcome, execute  # torch: only once a run is to be trained

    try:
        preflight.check_choices(hydra_cfg.runtime.choices)
        outcome = execute(cfg, run_dir, hydra_cfg.job.num if in_sweep else None)
    except USER_ERRORS as e:
        # Missing or bad dataset files would fail every run of a sweep alike: stop at once.
        if not in_sweep or isinstance(e, DatasetError):
            # Exit here: an exception would make Hydra print the job's overrides first.
            exit_with(PROG, e)
        log.error("run failed: %s", one_line(e))
        outcome = Outcome("failed", error=one_line(e))
    except Exception as e:
        if not in_sweep:
            raise
        log.exception("run failed: %s", run_dir)
        outcome = Outcome("failed", error=first_line(e))
    record_job(outcome.status, run_dir, outcome.error, outcome.skipped)
    if outcome.status == "running" and not in_sweep:
        print(f"{PROG}: {outcome.error}; wait for it or stop it, then rerun", file=sys.stderr)
        sys.exit(EXIT_LOCKED)
    return outcome.status


def _check_usage(argv: list[str]) -> None:
    """The command line as Hydra's own parser reads it, with its mistakes in our one line:
    argparse prints a usage block first, and Hydra says "one mode at a time" (-m, --cfg,
    --info, --shell-completion, --run) with a traceback."""

    def error(message: str) -> None:
        if message.startswith("unrecognized arguments") and "=" in message:
            message += "; give the flags (-m, --cfg, --info) before every key=value override"
        exit_with(PROG, ConfigError(f"{message}; see --help"))

    parser = get_args_parser()
    parser.error = error
    args = parser.parse_args(argv)
    modes = {
        "-m": args.multirun,
        "--cfg": args.cfg is not None,
        "--info": args.info is not None,
        "--shell-completion": args.shell_completion,
        "--run": args.run,
    }
    given = [flag for flag, on in modes.items() if on]
    if len(given) > 1:
        hint = ""
        if "--cfg" in given and "-m" in given:
            hint = "; without -m, --cfg job shows one cell's config (give its values)"
        exit_with(PROG, ConfigError(f"{' and '.join(given)} cannot go together{hint}"))
    _check_overrides(args.overrides)


def _check_overrides(overrides: list[str]) -> None:
    """Each key=value as Hydra's grammar reads it, naming the one it cannot read (Hydra's
    own message names only the grammar's tokens). The usual slip: a space after a comma."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for i, override in enumerate(overrides):
        try:
            parser.parse_override(override)
        except HydraException as e:  # the grammar's errors (OverrideParseException too)
            following = overrides[i + 1] if i + 1 < len(overrides) else ""
            if override.endswith(",") and following and "=" not in following:
                fix = (
                    f"a list takes no spaces after its commas: {override}{following} (or quote "
                    "the whole override)"
                )
            else:
                fix = f"{str(e).splitlines()[0]}; quote a value that holds spaces or symbols"
            exit_with(PROG, ConfigError(f"cannot read the override {override!r}: {fix}"))


def cli() -> None:
    _check_usage(sys.argv[1:])
    # Hydra prints composition errors over several lines and task errors with a traceback;
    # letting them through (HYDRA_FULL_ERROR) lets us print a user's mistake as one line.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    # A full disk must not turn every log line into a traceback on stderr.
    logging.raiseExceptions = False
    try:
        main()
    except USER_ERRORS as e:
        exit_with(PROG, e)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    # Call the imported module's copy: launchers (joblib, submitit) then pickle the task
    # function by reference (bnstudy.run.main) rather than by value with all of __main__.
    from bnstudy.run import cli as imported_cli

    imported_cli()
