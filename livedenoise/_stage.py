"""What every thread of ``serve`` shares: one failure path, throttled logging, and the side stage.

Each stage of ``serve`` (receive, infer, publish, and the side stages record, atoms, guard) runs in
a :class:`PipelineThread` (LiberTEM-live's ``ErrThreadMixin`` habit): an exception that escapes
the stage's loop is logged with its traceback, kept in :attr:`PipelineThread.error`, and reported
to the owner (``on_error``), which stops the pipeline and re-raises it as a
:class:`~livedenoise.errors.PipelineError`. Per-frame errors never get this far: the stages count
and log those and go on.

A side stage (:class:`SideStage`) takes the published frames off the pipeline through a publisher
hook: the recorder (:mod:`livedenoise.recording`), the atom finder and the guard
(:mod:`livedenoise.daemon`) are built on it. It sits at the package's bottom layer, below both,
and imports the standard library only (the serve-only install).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import ClassVar, Generic, Literal, TypeVar

log = logging.getLogger("livedenoise.daemon")

Spawn = Callable[[str, Callable[[], None]], threading.Thread]
"""``spawn(stage, target)``: start ``target`` in a thread named after ``stage`` and return it."""

T = TypeVar("T")

WhenFull = Literal["skip", "drop", "block"]


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


def spawn_thread(stage: str, target: Callable[[], None]) -> threading.Thread:
    """A :data:`Spawn` for a stage used on its own (no owner to tell): a started :class:`PipelineThread`."""
    thread = PipelineThread(stage, target)
    thread.start()
    return thread


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


class LogThrottle:
    """Log the first ``burst`` messages of a kind, then at most one per ``interval`` seconds with a
    count of those suppressed, so a flood of bad input cannot flood the log."""

    def __init__(self, logger: logging.Logger, burst: int = 5, interval: float = 1.0):
        self.logger, self.burst, self.interval = logger, burst, interval
        self._count = 0
        self._suppressed = 0
        self._next = 0.0

    def warning(self, msg: str, *args) -> None:
        self.log(logging.WARNING, msg, *args)

    def log(self, level: int, msg: str, *args, exc_info: BaseException | None = None) -> None:
        self._count += 1
        now = time.monotonic()
        if self._count <= self.burst or now >= self._next:
            if self._suppressed:
                msg = f"{msg} ({self._suppressed} similar messages suppressed)"
                self._suppressed = 0
            self.logger.log(level, msg, *args, exc_info=exc_info)
            if self._count > self.burst:
                self._next = now + self.interval
        else:
            self._suppressed += 1


class _Stop:
    """What :meth:`SideStage._get` returns once the stage is stopping and has nothing left to do."""


STOP = _Stop()


class SideStage(Generic[T]):
    """A thread beside the pipeline, fed through a bounded queue by a publisher hook.

    The producer (the publisher thread) calls :meth:`_put`; the stage's thread takes the items
    one by one and hands each to :meth:`_handle`, the per-item work a subclass supplies. What
    the queue does when it is full (``capacity`` items, or ``capacity_bytes``; a single item
    larger than that is still taken, alone) is ``when_full``:

    * ``"skip"``: the oldest waiting item is left out (a best-effort stage that wants the newest
      frames and must never hold back publishing);
    * ``"drop"``: the new item is left out;
    * ``"block"``: the producer waits for room (lossless: back-pressure up to the detector).

    Items left out are counted in :attr:`skipped`; per-item failures, which the subclass catches
    and reports through :meth:`_failed`, in :attr:`failed` (logged through a :class:`LogThrottle`).
    The thread runs at :attr:`nice` (None: serve's own priority, see :func:`demote_thread`) and
    also wakes at the time :meth:`_wait_s` names, for work that is due without an item
    (:meth:`_tick`). :meth:`close` handles what is still queued first where :attr:`drain` is set,
    then stops the thread. An exception escaping the loop ends the thread through the owner's
    failure path (:class:`PipelineThread`): the producer is released for good, and what was queued
    goes to :meth:`_rescue` (by default left out, counted).
    """

    stage: ClassVar[str] = "side"  # the thread's name: ld-<stage>
    nice: ClassVar[int | None] = None
    drain: ClassVar[bool] = True
    failure_level: ClassVar[int] = logging.WARNING

    def __init__(
        self, *, capacity: int, capacity_bytes: int | None = None, when_full: WhenFull = "skip",
        logger: logging.Logger = log,
    ):
        if when_full not in ("skip", "drop", "block"):
            raise ValueError(f"when_full {when_full!r}: expected skip, drop or block")
        self.capacity = max(1, int(capacity))
        self.capacity_bytes = capacity_bytes
        self.when_full: WhenFull = when_full
        self.log = logger
        self.skipped = 0  # items left out: the queue was full, or the thread had failed
        self.failed = 0  # items (or timed work) whose handling failed: counted, logged, skipped
        self._items: deque[tuple[T, int]] = deque()  # (item, its bytes)
        self._bytes = 0
        self._cv = threading.Condition()  # reentrant: a subclass's hook may hold it around _put
        self._stopping = False
        self._dead = False  # the thread failed: nothing is queued any more
        self._thread: threading.Thread | None = None
        self._failures = LogThrottle(logger)

    # ------------------------------------------------------------------ producer side

    def _put(self, item: T, nbytes: int = 0) -> bool:
        """Queue ``item`` (``nbytes`` of it) as ``when_full`` says; False where it was left out."""
        with self._cv:
            while True:
                if self._dead:
                    self.skipped += 1
                    return False
                if not self._full(nbytes):
                    break
                if self.when_full == "skip":
                    self._bytes -= self._items.popleft()[1]
                    self.skipped += 1
                elif self.when_full == "block" and not self._stopping:
                    self._cv.wait()  # back-pressure: holds the publisher, and so the detector
                else:
                    self.skipped += 1
                    return False
            self._items.append((item, nbytes))
            self._bytes += nbytes
            self._cv.notify_all()
            return True

    def _full(self, nbytes: int) -> bool:
        if not self._items:
            return False  # an item larger than the limit is still taken, alone
        over_bytes = self.capacity_bytes is not None and self._bytes + nbytes > self.capacity_bytes
        return len(self._items) >= self.capacity or over_bytes

    @property
    def waiting(self) -> int:
        """Items queued, not yet taken by the thread."""
        return len(self._items)

    # ------------------------------------------------------------------ lifetime

    def start(self, spawn: Spawn = spawn_thread) -> None:
        """Start the thread through ``spawn`` (the daemon's reports a failure of the thread)."""
        self._thread = spawn(self.stage, self.run)

    def close(self, timeout: float | None = 10.0) -> bool:
        """Stop the thread, after what is queued where :attr:`drain` is set (idempotent).
        Returns False where the thread is still running after ``timeout``."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        return not thread.is_alive()

    # ------------------------------------------------------------------ the stage's thread

    def run(self) -> None:
        if self.nice is not None:
            demote_thread(self.nice)
        try:
            self._begin()
            while (item := self._get()) is not STOP:
                if item is not None:
                    self._handle(item)
                self._tick()
        except BaseException:
            self._salvage()
            raise
        finally:
            self._end()

    def _get(self) -> T | _Stop | None:
        """The next queued item; None when :meth:`_wait_s` says timed work is due; :data:`STOP`
        once stopping (and drained, where :attr:`drain` is set)."""
        with self._cv:
            while not self._items and not self._stopping:
                wait = self._wait_s()
                if wait is not None and wait <= 0:
                    return None
                self._cv.wait(wait)
            if self._stopping and not (self.drain and self._items):
                return STOP
            item, nbytes = self._items.popleft()
            self._bytes -= nbytes
            self._cv.notify_all()  # a producer waiting for room
            return item

    def _salvage(self) -> None:
        """The thread is dying of an exception: release the producer for good and hand what was
        queued to :meth:`_rescue`."""
        with self._cv:
            self._dead = self._stopping = True
            items = [item for item, _ in self._items]
            self._items.clear()
            self._bytes = 0
            self._cv.notify_all()
        self._rescue(items)

    def _failed(self, msg: str, *args, exc_info: BaseException | None = None) -> None:
        """One item (or timed work) failed: count it and log it, throttled."""
        self.failed += 1
        self._failures.log(self.failure_level, msg, *args, exc_info=exc_info)

    # ------------------------------------------------------------------ what a subclass supplies

    def _handle(self, item: T) -> None:
        """The per-item work, in the stage's thread; its own failures are caught and :meth:`_failed`."""
        raise NotImplementedError

    def _begin(self) -> None:
        """Once, in the thread, before the first item (a warm-up)."""

    def _wait_s(self) -> float | None:
        """Under the lock: seconds until :meth:`_tick` has work due (<= 0: now); None: none."""
        return None

    def _tick(self) -> None:
        """After each item and each wake-up for timed work: what is due by the clock."""

    def _end(self) -> None:
        """Once, as the thread ends (stopped or failed)."""

    def _rescue(self, items: list[T]) -> None:
        """The thread failed with ``items`` queued: by default they are left out, counted."""
        with self._cv:
            self.skipped += len(items)
