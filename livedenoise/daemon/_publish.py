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
import queue
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from ..analysis import css
from ..errors import LivedenoiseError
from ..protocol import TOPIC_DENOISED, TOPIC_RAW, TOPIC_STATS, encode_published, pack
from ._stats import Stats

log = logging.getLogger("livedenoise.publish")

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
