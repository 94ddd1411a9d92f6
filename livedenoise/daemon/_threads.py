"""What every pipeline thread shares: throttled logging, and one failure path.

Each stage of ``serve`` (receive, infer, publish, record, atoms) runs in a :class:`PipelineThread`
(LiberTEM-live's ``ErrThreadMixin`` habit): an exception that escapes the stage's loop is logged
with its traceback, kept in :attr:`PipelineThread.error`, and reported to the owner
(``on_error``), which stops the pipeline and re-raises it as a
:class:`~livedenoise.errors.PipelineError`. Per-frame errors never get this far: the stages count
and log those and go on.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import threading
import time
from collections.abc import Callable

from ..errors import LivedenoiseError

log = logging.getLogger("livedenoise.daemon")

Spawn = Callable[[str, Callable[[], None]], threading.Thread]
"""``spawn(stage, target)``: start ``target`` in a thread named after ``stage`` and return it."""


class PipelineThread(threading.Thread):
    """A stage's thread: runs ``target``; if it raises, keeps the exception in :attr:`error`, logs
    it and calls ``on_error(self)`` (from this thread) so the owner can stop the rest.

    A daemon thread, named ``ld-<stage>``: a stage that hangs cannot keep the process alive.
    """

    def __init__(
        self,
        stage: str,
        target: Callable[[], None],
        on_error: Callable[[PipelineThread], None] | None = None,
        cpus: frozenset[int] = frozenset(),
    ):
        super().__init__(name=f"ld-{stage}", daemon=True)
        self.stage = stage
        self.error: BaseException | None = None
        self._run_stage = target
        self._on_error = on_error
        self._cpus = cpus

    def run(self) -> None:
        _name_native_thread(self.name)
        if self._cpus:
            os.sched_setaffinity(0, self._cpus)  # 0: this thread (Linux)
        try:
            self._run_stage()
        except BaseException as exc:  # kept, logged and handed to the owner, who re-raises it
            self.error = exc
            log.error("%s thread failed", self.stage, exc_info=exc)
            if self._on_error is not None:
                self._on_error(self)


def _name_native_thread(name: str) -> None:
    """Give the OS thread the stage's name (Linux: ``prctl(PR_SET_NAME)``, 15 characters), so
    ``top -H``, ``ps -L`` and /proc show which stage uses the CPU. Elsewhere nothing happens."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # 15: PR_SET_NAME
    except (OSError, AttributeError):
        pass  # no prctl: the name is only cosmetic


def place_pipeline(cpus: tuple[int, ...]) -> frozenset[int]:
    """``ServeConfig.pipeline_cpus``: move the process's threads, and so every thread started from
    now on (libzmq's I/O threads, onnxruntime's pool), to the CPUs *not* listed, and return the
    listed ones for the pipeline threads to take (:class:`PipelineThread` ``cpus``). Empty: nothing
    moves. One clear error where it cannot be done (not Linux, a CPU this process may not use)."""
    if not cpus:
        return frozenset()
    if not hasattr(os, "sched_setaffinity"):
        raise LivedenoiseError("--pipeline-cpus needs Linux (sched_setaffinity)")
    allowed = os.sched_getaffinity(0)
    wanted = frozenset(cpus)
    if not wanted <= allowed:
        raise LivedenoiseError(
            f"--pipeline-cpus {','.join(map(str, sorted(wanted)))}: this process may use CPUs "
            f"{','.join(map(str, sorted(allowed)))} only"
        )
    rest = (allowed - wanted) or wanted  # one CPU in all: everything shares it
    # every thread there is (numpy's BLAS pool started at import too), and so those started later
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(tid), rest)
    return wanted


def make_realtime(priority: int | None) -> None:
    """``ServeConfig.realtime``: every thread of this process, and so every thread started from now
    on (a thread starts with its starter's policy: onnxruntime's pool, libzmq's I/O), under
    ``SCHED_RR`` at ``priority`` (Linux). All of them: a thread left behind that holds the GIL when
    it is preempted would stall the others. None: nothing changes. One clear error where it cannot
    be done (not Linux, not permitted)."""
    if priority is None:
        return
    if not hasattr(os, "sched_setscheduler"):
        raise LivedenoiseError("--realtime needs Linux (SCHED_RR)")
    param = os.sched_param(priority)
    for tid in sorted(int(t) for t in os.listdir("/proc/self/task")):  # the main thread first
        try:
            os.sched_setscheduler(tid, os.SCHED_RR, param)
        except ProcessLookupError:
            continue  # a thread that ended meanwhile
        except PermissionError:
            raise LivedenoiseError(
                f"--realtime {priority}: not permitted; real-time scheduling needs root, CAP_SYS_NICE or an "
                "RLIMIT_RTPRIO allowance ('rtprio' in /etc/security/limits.conf, LimitRTPRIO= in a systemd unit)"
            ) from None


def demote_thread(nice: int = 0) -> None:
    """The calling thread below serve's pipeline (a background stage: atoms, the guard). Under
    ``--realtime``: one real-time priority lower, so the pipeline preempts it, yet still ahead of
    every ordinary job: a GIL it holds is never stuck behind them (at the pipeline's own priority
    the guard's estimates held a core for up to a 100 ms round-robin slice: p99 150 ms). Otherwise
    at ``nice`` (Linux nice values are per thread; 0: unchanged). Best effort, Linux only."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError):
        if os.sched_getscheduler(0) in (os.SCHED_RR, os.SCHED_FIFO):  # 0: the calling thread
            priority = os.sched_getparam(0).sched_priority
            if priority > 1:
                os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(priority - 1))
        elif nice:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


def spawn_thread(stage: str, target: Callable[[], None]) -> threading.Thread:
    """A :data:`Spawn` for a stage used on its own (no owner to tell): a started :class:`PipelineThread`."""
    thread = PipelineThread(stage, target)
    thread.start()
    return thread


class LogThrottle:
    """Log the first ``burst`` messages of a kind, then at most one per ``interval`` seconds with a
    count of those suppressed, so a flood of bad input cannot flood the log."""

    def __init__(self, logger: logging.Logger, burst: int = 5, interval: float = 1.0):
        self.logger, self.burst, self.interval = logger, burst, interval
        self._count = 0
        self._suppressed = 0
        self._next = 0.0

    def warning(self, msg: str, *args) -> None:
        self._count += 1
        now = time.monotonic()
        if self._count <= self.burst or now >= self._next:
            if self._suppressed:
                msg = f"{msg} ({self._suppressed} similar messages suppressed)"
                self._suppressed = 0
            self.logger.warning(msg, *args)
            if self._count > self.burst:
                self._next = now + self.interval
        else:
            self._suppressed += 1
