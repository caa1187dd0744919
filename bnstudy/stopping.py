"""Every bnstudy process stops within seconds of being asked to, even one stuck in native code.

Python runs a signal handler only between bytecodes, so Ctrl-C cannot stop a main thread that
is inside a native kernel that never returns (the oneDNN AVX2 hang of shared/repro). The
operating-system handler still runs, and `signal.set_wakeup_fd` makes it write the signal's
number to a pipe; a watchdog thread reads that pipe. After a Ctrl-C or SIGTERM, or once the
process that started this one is gone (a sweep's launcher, the benchmark's parent), the
watchdog gives the main thread GRACE_SECONDS to stop the ordinary way (KeyboardInterrupt,
which records the run as interrupted); if it has not, the watchdog calls `on_stuck` (which
records it) and ends the process with os._exit.
"""

from __future__ import annotations

import _thread
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

GRACE_SECONDS = 5.0
POLL_SECONDS = 0.5
EXIT_INTERRUPTED = 130  # as shells report SIGINT
SUBMITIT_ENV = "SUBMITIT_EXECUTOR"  # set in the processes of submitit's jobs
# The pid of the process that owns this one's work (set by the sweep for its jobs).
OWNER_ENV = "BNSTUDY_OWNER_PID"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM is handled as Ctrl-C: recorded, then exit 130


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def owner_pid() -> int | None:
    """The process whose end should end this one: the sweep that launched this job, if it
    runs in a process of its own (joblib, submitit_local)."""
    pid = os.environ.get(OWNER_ENV)
    return int(pid) if pid and pid.isdigit() and int(pid) != os.getpid() else None


class Stop:
    """What the watchdog does before it ends a stuck process: `on_stuck`, settable once the
    caller knows how to record the end (the run's summary)."""

    def __init__(self) -> None:
        self.on_stuck: Callable[[], None] = lambda: None


@contextmanager
def stops_within_seconds(owner: int | None = None) -> Iterator[Stop]:
    """Inside this block, Ctrl-C, SIGTERM or the end of process `owner` end this process
    within GRACE_SECONDS. The main thread gets a KeyboardInterrupt; if it is still running
    after the grace period, `Stop.on_stuck()` runs in the watchdog and the process exits 130."""
    stop = Stop()
    in_main = threading.current_thread() is threading.main_thread()
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    # submitit's jobs keep submitit's SIGTERM handling: on SLURM a SIGTERM comes before a
    # pre-emption that submitit requeues. A submitit_local job stops when its sweep ends.
    take_term = in_main and SUBMITIT_ENV not in os.environ
    stop_signals = (signal.SIGINT, signal.SIGTERM) if take_term else (signal.SIGINT,)
    previous_fd, previous_term = -1, None
    if in_main:  # only the main thread may set signal handlers and the wakeup fd
        previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    if take_term:
        previous_term = signal.signal(signal.SIGTERM, _interrupt)
    done = threading.Event()

    def watch() -> None:
        deadline = None
        while not done.is_set():
            ready, _, _ = select.select([read_end], [], [], POLL_SECONDS)
            if ready:
                received = os.read(read_end, 64)
                if deadline is None and any(n in received for n in stop_signals):
                    deadline = time.monotonic() + GRACE_SECONDS
            if deadline is None and owner is not None and not _alive(owner):
                log.warning("the process that started this one (%d) is gone: stopping", owner)
                _thread.interrupt_main()
                deadline = time.monotonic() + GRACE_SECONDS
            if deadline is not None and time.monotonic() > deadline and not done.is_set():
                log.error("still running %.0f s after being stopped: exiting", GRACE_SECONDS)
                try:
                    stop.on_stuck()
                finally:
                    os._exit(EXIT_INTERRUPTED)

    watchdog = threading.Thread(target=watch, name="bnstudy-stop-watchdog", daemon=True)
    watchdog.start()
    try:
        yield stop
    finally:
        done.set()
        os.write(write_end, b"\0")  # wakes the watchdog now, not at its next poll
        if in_main:
            signal.set_wakeup_fd(previous_fd)
        if take_term:
            signal.signal(signal.SIGTERM, previous_term or signal.SIG_DFL)
        watchdog.join()
        os.close(read_end)
        os.close(write_end)
