"""Spread concurrent runs over the GPUs of one machine instead of piling them on GPU 0."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bnstudy.records import held

log = logging.getLogger(__name__)


@contextmanager
def claim_gpu(count: int, lock_dir: Path | None = None, poll_s: float = 5.0) -> Iterator[int]:
    """Hold the lowest-numbered GPU that no other bnstudy process on this machine holds.

    Each GPU is a lock file; a process that dies releases its lock. When every GPU is held,
    wait for one to come free rather than share (two trainings on one GPU run slower than
    one after the other).
    """
    lock_dir = Path(lock_dir or tempfile.gettempdir())
    waited = False
    while True:
        for index in range(count):
            with held(lock_dir / f"bnstudy-{os.getuid()}-gpu{index}.lock") as ours:
                if ours:
                    yield index
                    return
        if not waited:
            log.info("all %d GPUs are busy with other bnstudy runs; waiting for one", count)
            waited = True
        time.sleep(poll_s)
