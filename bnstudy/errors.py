"""User errors as one line: the kinds bnstudy raises for a mistake it can name, and how every
command (run, bench, results) prints them: `<prog>: error: <one line>`, exit status 2. No torch
at import, so that a refusal costs no more than Hydra's own start.
"""

from __future__ import annotations

import re
import sys
from typing import NoReturn

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from bnstudy.records import RecordsError

PROG = "bnstudy"  # how `python -m bnstudy.run` names itself in messages
USAGE_EXIT = 2  # the exit status of every user error


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and the fix."""


class DatasetError(RuntimeError):
    """Dataset files missing, unreadable or tampered with; the message says what to do."""


class OutOfMemory(RuntimeError):
    """The run needs more memory than the device has; the message says how much and the fix."""


# Errors that mean "the user asked for something that cannot work here": one line, exit 2.
OUR_ERRORS = (ConfigError, DatasetError, RecordsError, OutOfMemory)
USER_ERRORS = (HydraException, OmegaConfBaseException, *OUR_ERRORS)


def as_out_of_memory(error: BaseException, what: str) -> OutOfMemory | None:
    """`error` as an OutOfMemory naming `what` was asked for, or None if it is something else."""
    import torch

    text = str(error)
    if not (isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in text):
        return None
    # The CPU allocator says "tried to allocate N bytes", CUDA's "Tried to allocate 2.00 GiB".
    found = re.search(r"[Tt]ried to allocate ([\d.]+) ?(\w+)", text)
    asked = "an allocation failed"
    if found:
        size, unit = found.groups()
        gib = float(size) / 2**30 if unit == "bytes" else None
        asked = f"asked for {gib:,.1f} GiB" if gib is not None else f"asked for {size} {unit}"
    return OutOfMemory(f"out of memory ({asked}) with {what}; lower batch_size or model.width")


def one_line(error: BaseException) -> str:
    """A user error as one line: ours as they are; Hydra's and OmegaConf's first lines and key."""
    cause: BaseException | None = error
    while cause is not None:  # our errors raised inside a resolver arrive wrapped by OmegaConf
        if isinstance(cause, OUR_ERRORS):
            return str(cause)
        cause = cause.__cause__ or cause.__context__
    parts = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = parts[0] if parts else type(error).__name__
    detail = error.__cause__ if isinstance(error.__cause__, OmegaConfBaseException) else error
    if isinstance(detail, OmegaConfBaseException):
        first = str(detail).splitlines()[0].strip()
        key = getattr(detail, "full_key", None)
        if first and first not in text:
            text = f"{text} {first}"
        if key and key not in text:
            text = f"{text} (key: {key})"
    if text.startswith("Ambiguous value for argument"):  # Hydra's advice is on later lines
        text += "; to run each of its values, add -m"
    # Hydra lists the group's schemas (optim/sgd_schema) too; they are not choices.
    options = [o for o in getattr(error, "options", None) or [] if not o.endswith("_schema")]
    if options:
        text = f"{text}; choose one of: {', '.join(sorted(options))}"
    return text


def first_line(error: BaseException) -> str:
    """Any exception as `Type: first line`, for records."""
    return f"{type(error).__name__}: {error}".splitlines()[0]


def exit_with(prog: str, error: BaseException, status: int = USAGE_EXIT) -> NoReturn:
    print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
    sys.exit(status)
