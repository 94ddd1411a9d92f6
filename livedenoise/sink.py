"""The publishing stage: denoised and raw frames, CSS and stats on the daemon's PUB socket.

One thread owns the PUB socket. Per frame it computes CSS against the previous denoised frame of
the same series (O(H*W) numpy, kept off the inference thread), stamps ``latency_ms`` (receipt to
publish) and sends ``[b"raw", header, payload]`` then ``[b"denoised", header, payload]``, payloads
without copying. At least once per second it sends ``[b"stats", header]``
(:meth:`Stats.snapshot`). A PUB socket never blocks: a slow subscriber loses messages at its
high-water mark and never slows the daemon.

``hooks`` are called in the publisher thread with each :class:`Delivered` frame, after it is
published (the place for recording; a hook must be fast or hand the frame to its own thread).
"""

from __future__ import annotations

import logging
import queue
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from .errors import LivedenoiseError
from .metrics import css
from .protocol import TOPIC_DENOISED, TOPIC_RAW, TOPIC_STATS, encode_published, pack

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
                if time.perf_counter() >= next_stats:
                    self.send_stats()
                    next_stats = time.perf_counter() + self.interval
            for finish in self.finishers:
                try:
                    finish()
                except Exception:
                    log.exception("publisher finisher %r failed", finish)
            self.send_stats()
        finally:
            self.socket.close(linger=self.linger_ms)

    def send_stats(self) -> None:
        self.socket.send_multipart([TOPIC_STATS, pack(self.stats.snapshot())])

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
