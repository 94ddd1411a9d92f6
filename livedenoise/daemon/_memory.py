"""Give the heap's free pages back to the OS after a backlog, so serve's RSS follows what it holds.

A 128² frame is 32–64 KiB, below glibc's mmap threshold: frames live in the malloc arenas. When a
stall lets the queues fill (a disk flush, another job on the CPU), the backlog's frames are freed
once it drains, but long-lived small objects allocated meanwhile pin the arenas' tops, so glibc
keeps the pages: RSS steps up by the backlog's size and stays there for the life of the process
(the native soak of docs/reliability.md: +24 MiB after 19 min at 150 fps, flat before and after).
``malloc_trim(0)`` releases every whole free page in every arena (``madvise(MADV_DONTNEED)``), so
the next sample shows what serve really holds. Elsewhere than glibc (musl, macOS) it is a no-op.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time

log = logging.getLogger("livedenoise.daemon")

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):  # not glibc
        return None


def rss_bytes() -> int:
    """This process's resident set (Linux; 0 where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return 0


class HeapTrimmer:
    """Every ``interval`` seconds (:meth:`maybe_trim`, from serve's main thread), ``malloc_trim(0)``.

    ctypes drops the GIL for the call, so the pipeline threads run on; glibc takes each arena's lock
    in turn, so a thread that allocates waits at most one arena's walk (0.4-4 ms at serve's ~200 MiB
    in the native soak of docs/reliability.md; :meth:`counters` ``heap_trim_ms_max``).
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._trim = _malloc_trim() if interval > 0 else None
        self._next = time.monotonic() + interval
        self._lock = threading.Lock()
        self.released = 0
        self.trim_ms_max = 0.0

    @property
    def active(self) -> bool:
        return self._trim is not None

    def maybe_trim(self) -> None:
        if self._trim is None or time.monotonic() < self._next:
            return
        self.trim()

    def trim(self) -> int:
        """Release now; returns the bytes the RSS went down by (0 where it did not, or off glibc)."""
        if self._trim is None:
            return 0
        before = rss_bytes()
        t0 = time.perf_counter()
        self._trim(0)
        ms = (time.perf_counter() - t0) * 1e3
        released = max(0, before - rss_bytes())
        with self._lock:
            self.released += released
            self.trim_ms_max = max(self.trim_ms_max, ms)
        self._next = time.monotonic() + self.interval
        if released >= 4 << 20:
            log.info("gave %.1f MiB of freed heap back to the OS (%.1f ms)", released / 2**20, ms)
        return released

    def counters(self) -> dict[str, float]:
        with self._lock:
            return {
                "heap_released_mib": round(self.released / 2**20, 1),
                "heap_trim_ms_max": round(self.trim_ms_max, 2),
            }
