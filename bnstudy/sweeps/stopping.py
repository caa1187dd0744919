"""Every bnstudy process stops within seconds of being asked to, even one stuck in native code.

Python runs a signal handler only between bytecodes, so Ctrl-C cannot stop a main thread that
is inside a native kernel that never returns (the oneDNN AVX2 hang of shared/repro). The
operating-system handler still runs, and `signal.set_wakeup_fd` makes it write the signal's
number to a pipe; a watchdog thread reads that pipe. After a Ctrl-C or SIGTERM, or once the
process that started this one is gone (a sweep's launcher, the benchmark's parent), the
watchdog gives the main thread GRACE_SECONDS to stop the ordinary way (KeyboardInterrupt,
which records the run as interrupted); if it has not, the watchdog calls `on_stuck` (which
records it) and ends the process with os._exit.

A job of a SLURM cluster (run by submitit) is stopped by the scheduler, not by its sweep: it
never watches the process that submitted it (that one may be on another machine, or gone).
SIGTERM means SLURM is cancelling, requeueing or pre-empting the job, and SIGUSR2 that
submitit is about to requeue it at its time limit; `Stop.outcome` says which, for the record.
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


SUBMITIT_ENV = "SUBMITIT_EXECUTOR"  # set in the processes of submitit's jobs: local or slurm


# The pid of the process that owns this one's work (set by the sweep for its jobs).
OWNER_ENV = "BNSTUDY_OWNER_PID"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def in_slurm_job() -> bool:
    """Whether this process is a SLURM job's, run by submitit (hydra/launcher=slurm)."""
    return os.environ.get(SUBMITIT_ENV) == "slurm"


def owner_pid() -> int | None:
    """The process whose end should end this one: the sweep that launched this job, if it
    runs in a process of its own on this machine (joblib, submitit_local). Never for a SLURM
    job: it belongs to the cluster, and the sweep's pid means nothing on its node."""
    pid = os.environ.get(OWNER_ENV)
    if in_slurm_job():
        return None
    return int(pid) if pid and pid.isdigit() and int(pid) != os.getpid() else None


class Stop:
    """Why this process is being stopped, and what the watchdog does before it ends a stuck
    process: `on_stuck`, settable once the caller knows how to record the end."""

    def __init__(self) -> None:
        self.on_stuck: Callable[[], None] = lambda: None
        self.signal: int | None = None  # the first stop signal (SIGINT, SIGTERM)
        self.owner_gone = False
        self.requeue_signal = False  # submitit's SIGUSR2 came: it requeues this SLURM job

    def asked_for(self, error: BaseException) -> bool:
        """Whether `error` is this stop arriving (rather than the run failing): Ctrl-C and
        SIGTERM raise KeyboardInterrupt; submitit's requeue raises SystemExit (or, out of
        requeues, its UncompletedJobError)."""
        return isinstance(error, KeyboardInterrupt) or self.requeue_signal

    def outcome(self, error: BaseException | None = None) -> tuple[str, str]:
        """The run's status and recorded reason after this stop."""
        if self.requeue_signal:
            if error is not None and not isinstance(error, SystemExit | KeyboardInterrupt):
                # Out of requeues (max_num_timeout): submitit says so and does not requeue.
                said = (str(error).strip() or type(error).__name__).splitlines()[0]
                return "interrupted", f"{said}; rerun to resume"
            return "requeued", (
                f"SLURM job {os.environ.get('SLURM_JOB_ID')}: time limit or pre-emption; "
                "submitit requeued it and it resumes from its last checkpoint"
            )
        if self.signal == signal.SIGTERM and in_slurm_job():
            from bnstudy.sweeps.slurm import why_stopped

            stopped = why_stopped()
            return stopped.status, stopped.reason
        if self.signal == signal.SIGTERM:
            return "interrupted", "interrupted (SIGTERM)"
        if self.owner_gone:
            return "interrupted", "interrupted: the sweep that started it ended"
        return "interrupted", "interrupted (Ctrl-C)"


@contextmanager
def stops_within_seconds(owner: int | None = None) -> Iterator[Stop]:
    """Inside this block, Ctrl-C, SIGTERM or the end of process `owner` end this process
    within GRACE_SECONDS. The main thread gets a KeyboardInterrupt; if it is still running
    after the grace period, `Stop.on_stuck()` runs in the watchdog and the process exits 130."""
    stop = Stop()
    in_main = threading.current_thread() is threading.main_thread()
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    # A submitit_local job keeps submitit's SIGTERM handling and stops when its sweep ends.
    # A SLURM job takes SIGTERM (SLURM cancels, requeues or pre-empts it) and leaves
    # submitit's SIGUSR2 handler (the requeue at the time limit) in place, noting it first.
    take_term = in_main and (SUBMITIT_ENV not in os.environ or in_slurm_job())
    stop_signals = (signal.SIGINT, signal.SIGTERM) if take_term else (signal.SIGINT,)
    previous_fd, previous_term, previous_usr = -1, None, None
    usr = _requeue_signal() if in_main and in_slurm_job() else None

    raised = False

    def interrupt(signum: int, frame: object) -> None:
        nonlocal raised
        stop.signal = stop.signal or signum  # the watchdog may have read it first
        if not raised:  # a second signal while the first is being recorded: let that finish
            raised = True
            raise KeyboardInterrupt  # handled as Ctrl-C: recorded, then exit 130

    def requeue(signum: int, frame: object) -> None:
        stop.requeue_signal = True
        if callable(previous_usr):
            previous_usr(signum, frame)  # submitit: requeue, then SystemExit

    if in_main:  # only the main thread may set signal handlers and the wakeup fd
        previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    if take_term:
        previous_term = signal.signal(signal.SIGTERM, interrupt)
    if usr is not None:
        previous_usr = signal.signal(usr, requeue)
    done = threading.Event()

    def watch() -> None:
        deadline = None
        while not done.is_set():
            ready, _, _ = select.select([read_end], [], [], POLL_SECONDS)
            if ready:
                received = os.read(read_end, 64)
                stopping = [n for n in stop_signals if n in received]
                if deadline is None and stopping:
                    if stop.signal is None:
                        stop.signal = stopping[0]
                    deadline = time.monotonic() + GRACE_SECONDS
            if deadline is None and owner is not None and not _alive(owner):
                log.warning("the process that started this one (%d) is gone: stopping", owner)
                stop.owner_gone = True
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
        if usr is not None:
            signal.signal(usr, previous_usr or signal.SIG_DFL)
        watchdog.join()
        os.close(read_end)
        os.close(write_end)


def _requeue_signal() -> int:
    """The signal submitit's SLURM jobs requeue on (SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL)."""
    from submitit.core.job_environment import JobEnvironment

    return JobEnvironment._usr_sig()
