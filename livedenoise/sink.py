"""The publishing stage: denoised and raw frames, CSS and stats on the daemon's PUB socket.

One thread owns the PUB socket. Per frame it computes CSS against the previous denoised frame of
the same series (O(H*W) numpy, kept off the inference thread), stamps ``latency_ms`` (receipt to
publish) and sends ``[b"raw", header, payload]`` then ``[b"denoised", header, payload]``, payloads
without copying. At least once per second it sends ``[b"stats", header]``
(:meth:`Stats.snapshot`). A PUB socket never blocks: a slow subscriber loses messages at its
high-water mark and never slows the daemon.

``hooks`` are called in the publisher thread with each :class:`Delivered` frame, after it is
published (the place for recording; a hook must be fast or hand the frame to its own thread).
A stage in a thread of its own publishes through :meth:`Publisher.post` (the socket stays in
the publisher thread): :class:`AtomFinder` (``serve --atoms``) does, sending ``[b"atoms", header]``
per frame.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import zmq

from .atoms import find_atoms
from .errors import LivedenoiseError
from .metrics import css
from .protocol import TOPIC_DENOISED, TOPIC_RAW, TOPIC_STATS, encode_atoms, encode_published, pack
from .source import LogThrottle

log = logging.getLogger("livedenoise.sink")

STATS_WINDOW_S = 1.0
MAX_SERIES_TRACKED = 8  # series whose previous denoised frame is kept for CSS


@dataclass(slots=True)
class Delivered:
    """A frame as published: ids, the raw view, the denoised [0, 1] frame, CSS and latency."""

    series_id: int
    image_id: int
    raw: np.ndarray
    denoised: np.ndarray
    css: float | None
    latency_ms: float
    start_time: int | None = None


class Stats:
    """The daemon's counters and sliding-window rates, readable from any thread.

    Each counter has one writer thread (the receiver, the inference thread or the publisher),
    so plain ``+=`` is safe; :meth:`snapshot` sums and derives the published figures.
    """

    def __init__(self, *, model: str = "", provider: str = "", source=None, frame_queue=None):
        self.model, self.provider = model, provider
        self.source = source  # has .received .malformed .gaps
        self.queue = frame_queue  # has .dropped and len()
        self.malformed_pixels = 0  # written by the inference thread
        self.failed = 0  # written by the inference thread
        self.denoised = 0  # written by the publisher thread
        self._window: deque[tuple[float, float, float]] = deque(maxlen=1 << 17)  # (t, latency_ms, css)
        self._t0 = time.perf_counter()
        self._last: tuple[float, int, int] = (self._t0, 0, 0)  # (t, received, denoised)
        self.extras: list[Callable[[], dict[str, Any]]] = []  # more counters (e.g. the recorder's)

    def record(self, t: float, latency_ms: float, css_value: float | None) -> None:
        """One published frame (publisher thread, O(1))."""
        self.denoised += 1
        self._window.append((t, latency_ms, np.nan if css_value is None else css_value))

    def snapshot(self) -> dict[str, Any]:
        """The ``stats`` header: counters, fps since the last snapshot, last-second latency and CSS."""
        now = time.perf_counter()
        received = self.source.received if self.source else 0
        t_prev, rec_prev, den_prev = self._last
        dt = max(now - t_prev, 1e-9)
        self._last = (now, received, self.denoised)
        while self._window and self._window[0][0] < now - STATS_WINDOW_S:
            self._window.popleft()
        if self._window:
            arr = np.asarray(self._window, dtype=np.float64)
            p50, p99 = np.percentile(arr[:, 1], [50, 99])
            valid = arr[:, 2][~np.isnan(arr[:, 2])]
            css_mean = float(valid.mean()) if valid.size else None
            p50, p99 = round(float(p50), 3), round(float(p99), 3)
        else:
            p50 = p99 = css_mean = None
        return {
            "received": received,
            "denoised": self.denoised,
            "dropped": self.queue.dropped if self.queue is not None else 0,
            "malformed": (self.source.malformed if self.source else 0) + self.malformed_pixels,
            "failed": self.failed,
            "gaps": self.source.gaps if self.source else 0,
            "disconnects": getattr(self.source, "disconnects", 0),
            "fps_in": round((received - rec_prev) / dt, 2),
            "fps_out": round((self.denoised - den_prev) / dt, 2),
            "latency_ms_p50": p50,
            "latency_ms_p99": p99,
            "queue_depth": len(self.queue) if self.queue is not None else 0,
            "css": css_mean,
            "model": self.model,
            "provider": self.provider,
            "series_id": self.source.series_id if self.source else None,
            "uptime_s": round(now - self._t0, 3),
        } | {k: v for extra in self.extras for k, v in extra().items()}


class Publisher:
    """Publishes inference results and stats; owns the PUB socket.

    The inference thread calls :meth:`submit` with one list per batch of
    ``(Received, denoised)`` pairs; :meth:`run` (its own thread) publishes them in order.
    """

    STOP = object()

    def __init__(
        self,
        ctx: zmq.Context,
        address: str,
        stats: Stats,
        *,
        interval: float = 0.5,
        sndhwm: int = 1000,
        linger_ms: int = 1000,
        backlog: int = 16,
        configure: Callable[[zmq.Socket], None] | None = None,
    ):
        self.address = address
        self.stats = stats
        self.interval = interval
        self.linger_ms = linger_ms
        self.hooks: list[Callable[[Delivered], None]] = []
        self.finishers: list[Callable[[], None]] = []  # run at the end, before the last stats
        self._in: queue.Queue = queue.Queue(maxsize=backlog)
        self._posted: deque[list] = deque()  # messages other threads asked to send (post)
        self._previous: OrderedDict[int, np.ndarray] = OrderedDict()
        self.socket = ctx.socket(zmq.PUB)
        self.socket.setsockopt(zmq.SNDHWM, sndhwm)
        self.socket.setsockopt(zmq.LINGER, linger_ms)
        try:
            if configure is not None:
                configure(self.socket)  # e.g. CURVE server keys (livedenoise.security)
            self.socket.bind(address)
        except zmq.ZMQError as exc:
            self.socket.close(linger=0)
            raise LivedenoiseError(f"cannot publish on {address!r}: {exc}") from None
        except BaseException:
            self.socket.close(linger=0)
            raise
        self.last_endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def submit(self, batch: list) -> None:
        """Hand over one batch (blocks only if the publisher is ``backlog`` batches behind)."""
        self._in.put(batch)

    def finish(self) -> None:
        """Publish what was submitted, a last stats message, then stop."""
        self._in.put(self.STOP)

    def post(self, parts: list) -> None:
        """Have the publisher thread send ``parts`` soon (thread-safe; for stages with their own thread).

        Never blocks: the message waits in a list that the publisher thread empties after each
        batch; an empty batch queue gets a ``None`` item that only wakes it.
        """
        self._posted.append(parts)  # append before looking at _in: run() empties _posted after every get
        if self._in.empty():
            try:
                self._in.put_nowait(None)
            except queue.Full:  # batches arrived meanwhile: the publisher wakes for them anyway
                pass

    def run(self) -> None:
        next_stats = time.perf_counter() + self.interval
        try:
            while True:
                timeout = max(0.0, next_stats - time.perf_counter())
                try:
                    batch = self._in.get(timeout=timeout)
                except queue.Empty:
                    batch = None
                if batch is self.STOP:
                    break
                if batch:
                    try:
                        self._publish(batch)
                    except Exception:  # a bug must not stop the stream: log it, go on
                        log.exception("publishing a batch of %d frames failed", len(batch))
                if self._posted:
                    self._send_posted()
                if time.perf_counter() >= next_stats:
                    self.send_stats()
                    next_stats = time.perf_counter() + self.interval
            for finish in self.finishers:
                try:
                    finish()
                except Exception:
                    log.exception("publisher finisher %r failed", finish)
            self._send_posted()  # what the finishers' stages posted while they finished
            self.send_stats()
        finally:
            self.socket.close(linger=self.linger_ms)

    def send_stats(self) -> None:
        self.socket.send_multipart([TOPIC_STATS, pack(self.stats.snapshot())])

    def _send_posted(self) -> None:
        while self._posted:
            parts = self._posted.popleft()
            try:
                self.socket.send_multipart(parts)
            except Exception:
                log.exception("sending a posted %r message failed", parts[0][:20])

    def _publish(self, batch: list) -> None:
        send = self.socket.send_multipart
        previous = self._previous
        for received, out in batch:
            frame = received.frame
            sid = frame.series_id
            prev = previous.get(sid)
            value = css(prev, out) if prev is not None and prev.shape == out.shape else None
            previous[sid] = out
            previous.move_to_end(sid)
            if len(previous) > MAX_SERIES_TRACKED:
                previous.popitem(last=False)
            ids: dict[str, Any] = {"series_id": sid, "image_id": frame.image_id}
            if frame.start_time is not None:
                ids["start_time"] = frame.start_time
            send(encode_published(TOPIC_RAW, ids, frame.data), copy=False)
            now = time.perf_counter()
            latency_ms = (now - received.t_recv) * 1e3
            header = {**ids, "css": value, "latency_ms": round(latency_ms, 3)}
            send(encode_published(TOPIC_DENOISED, header, out), copy=False)
            self.stats.record(now, latency_ms, value)
            if self.hooks:
                delivered = Delivered(sid, frame.image_id, frame.data, out, value, latency_ms, frame.start_time)
                for hook in self.hooks:
                    try:
                        hook(delivered)
                    except Exception:
                        log.exception("publish hook %r failed", hook)


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
    should hold at least two.) The finder thread runs :func:`~livedenoise.atoms.find_atoms` on the
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

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="ld-atoms", daemon=True)
        self._thread.start()

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
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
            except OSError:
                pass
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
            except Exception as exc:  # a bug, or a frame the finder cannot take: count, go on
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
