"""``serve --atoms``: the atoms of every published frame, found in a thread of their own."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections import deque
from typing import Any, NamedTuple

import numpy as np

from ..analysis import find_atoms
from ..protocol import encode_atoms
from ._publish import Delivered, Publisher
from ._threads import LogThrottle, Spawn, spawn_thread

log = logging.getLogger("livedenoise.analysis")


class _AtomsJob(NamedTuple):
    """What the atom finder keeps of a :class:`Delivered` frame (not the raw one: less memory held)."""

    series_id: int
    image_id: int
    start_time: int | None
    denoised: np.ndarray


class AtomFinder:
    """``serve --atoms``: the atoms of every published denoised frame, found in a thread of their own.

    :meth:`submit` is a publisher hook (O(1)): it queues the denoised frame, keeping at most
    ``backlog`` frames and ``backlog_bytes``; when the finder falls behind, the oldest waiting frame
    is skipped and counted (``atoms_skipped``), so atom finding never holds back publishing,
    inference or the detector, lossless mode included. (A batch arrives at once: ``backlog``
    should hold at least two.) The finder thread runs :func:`~livedenoise.analysis.find_atoms` on the
    denoised frame ([0, 1], background near 0, an atom's peak near 1), at a lower OS priority on
    Linux, and hands ``[b"atoms", header]`` (:func:`~livedenoise.protocol.encode_atoms`) to
    :meth:`Publisher.post`. A failure is counted (``atoms_failed``) and logged, never raised.

    Parameters
    ----------
    threshold:
        Minimum peak height above the frame's median (background), in denoised units; with
        ``relative``, a fraction of the frame's highest peak instead.
    """

    RECENT = 256  # finder times kept for the stats percentiles

    def __init__(
        self,
        publisher: Publisher,
        *,
        threshold: float = 0.4,
        relative: bool = False,
        backlog: int = 16,
        backlog_bytes: int = 256 << 20,
    ):
        self.publisher = publisher
        self.threshold, self.relative = threshold, relative
        self.backlog, self.backlog_bytes = max(1, backlog), backlog_bytes
        self._items: deque[_AtomsJob] = deque()
        self._bytes = 0
        self._cv = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._failures = LogThrottle(log)
        self.frames = 0  # frames whose atoms were posted (finder thread)
        self.failed = 0  # frames whose atom finding failed (finder thread)
        self.skipped = 0  # frames left out because the finder was behind (publisher thread)
        self.last_count: int | None = None
        self._ms: deque[float] = deque(maxlen=self.RECENT)

    def start(self, spawn: Spawn = spawn_thread) -> None:
        """Start the finder thread through ``spawn`` (the daemon's reports a failure of the thread)."""
        self._thread = spawn("atoms", self.run)

    def submit(self, delivered: Delivered) -> None:
        """Publisher hook: queue one frame; skip the oldest waiting ones beyond the backlog."""
        item = _AtomsJob(delivered.series_id, delivered.image_id, delivered.start_time, delivered.denoised)
        with self._cv:
            while self._items and (
                len(self._items) >= self.backlog or self._bytes + item.denoised.nbytes > self.backlog_bytes
            ):
                self._bytes -= self._items.popleft().denoised.nbytes
                self.skipped += 1
            self._items.append(item)
            self._bytes += item.denoised.nbytes
            self._cv.notify()

    def close(self, timeout: float | None = 10.0) -> None:
        """Find the atoms of the frames still queued, then stop the thread (idempotent)."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def counters(self) -> dict[str, Any]:
        """Stats fields: frames done, skipped and failed, the newest count, finder time (last 256 frames)."""
        ms = np.array(self._ms, dtype=np.float64)
        p50, p99 = (round(float(v), 3) for v in np.percentile(ms, [50, 99])) if ms.size else (None, None)
        return {
            "atoms_frames": self.frames,
            "atoms_skipped": self.skipped,
            "atoms_failed": self.failed,
            "atoms_last": self.last_count,
            "atoms_ms_p50": p50,
            "atoms_ms_p99": p99,
        }

    def run(self) -> None:
        if sys.platform.startswith("linux"):  # Linux nice values are per thread: inference goes first
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        while True:
            with self._cv:
                while not self._items and not self._stopping:
                    self._cv.wait()
                if not self._items:
                    return  # stopping, and everything queued is done
                item = self._items.popleft()
                self._bytes -= item.denoised.nbytes
            try:
                parts = self._find(item)
            except Exception as exc:  # noqa: BLE001 - a bug, or a frame the finder cannot take: count, go on
                self.failed += 1
                self._failures.warning(
                    "atom finding failed on series %s image %s: %r", item.series_id, item.image_id, exc
                )
                continue
            self.publisher.post(parts)

    def _find(self, item: _AtomsJob) -> list:
        t0 = time.perf_counter()
        if self.relative:
            atoms = find_atoms(item.denoised, threshold=None, rel_threshold=self.threshold)
        else:
            atoms = find_atoms(item.denoised, threshold=self.threshold)
        ms = (time.perf_counter() - t0) * 1e3
        header: dict[str, Any] = {"series_id": item.series_id, "image_id": item.image_id}
        if item.start_time is not None:
            header["start_time"] = item.start_time
        header |= {"time_ns": time.time_ns(), "background": atoms.background, "finder_ms": round(ms, 3)}
        parts = encode_atoms(header, atoms.positions, atoms.intensities, atoms.heights, threshold=atoms.threshold)
        self._ms.append(ms)
        self.frames += 1
        self.last_count = len(atoms)
        return parts
