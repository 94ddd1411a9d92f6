"""The publishing stage: denoised and raw frames, CSS and stats on the daemon's PUB socket.

One thread owns the PUB socket. Per batch it computes CSS of each frame against the previous
denoised frame of the same series run (O(H*W) numpy, kept off the inference thread, vectorised
over each run of consecutive frames of one series, epoch and shape by
:func:`~livedenoise.analysis.css_chain`: 20 against 81-100 us a frame at 128²); the first frame of
a new epoch (a ``start`` message, a change of series id: :class:`~livedenoise.daemon.Received`)
gets ``css`` None. Per frame it stamps ``latency_ms`` (receipt to publish) and sends ``[b"raw", header, payload]`` then ``[b"denoised", header, payload]``, payloads
without copying. At least once per second it sends ``[b"stats", header]``
(:meth:`Stats.snapshot`). A PUB socket never blocks: a slow subscriber loses messages at its
high-water mark, silently, and never slows the daemon.

``push`` (``serve --push-output``) adds a PUSH socket for one consumer that must get every frame:
the same ``[b"denoised", header, payload]`` messages, sent blocking, so a slow consumer holds the
publisher back, then inference, then (``--lossless``) the detector. Only at shutdown does the
publisher give up on a consumer that takes nothing for ``push_grace`` seconds (counted
``push_lost``), so that a vanished consumer cannot keep the daemon from exiting.

``hooks`` are called in the publisher thread with each :class:`Delivered` frame, after it is
published (the place for recording; a hook must be fast or hand the frame to its own thread).
A stage in a thread of its own publishes through :meth:`Publisher.post` (the socket stays in
the publisher thread): :class:`AtomFinder` (``serve --atoms``) does, sending ``[b"atoms", header]``
per frame.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from .._stage import LogThrottle
from ..analysis import css_chain
from ..errors import LivedenoiseError
from ..protocol import TOPIC_DENOISED, TOPIC_RAW, TOPIC_STATS, Calibration, encode_published, pack
from ._stats import Stats

log = logging.getLogger("livedenoise.publish")

MAX_SERIES_TRACKED = 8  # series whose previous denoised frame is kept for CSS

#: Payloads from this size on are sent without copying; smaller ones are copied. pyzmq hands a
#: zero-copy frame back through its garbage-collector thread, one more thread taking the GIL per
#: message: measured here, a 64 KiB part (a 128² float32 frame) costs 3.3 us copied against 10.9
#: zero-copy (6.2 against 10.6 beside a busy thread), a 1 MiB one 100 against 4 beside one.
ZERO_COPY_BYTES = 1 << 18
_MORE = int(zmq.SNDMORE)  # a plain int: IntFlag arithmetic per part costs more than the send


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
    calibration: Calibration | None = None  # the input's (pixel size, frame time), if it sent one
    epoch: int = 0  # the receiver's series epoch (:class:`Received`): a new one at each series restart


class Publisher:
    """Publishes inference results and stats; owns the PUB socket (and the PUSH one, if any).

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
        push: str | None = None,
        push_hwm: int = 16,
        push_grace: float = 5.0,
    ):
        self.address = address
        self.stats = stats
        self.interval = interval
        self.linger_ms = linger_ms
        self.hooks: list[Callable[[Delivered], None]] = []
        self.finishers: list[Callable[[], None]] = []  # run at the end, before the last stats
        # called with (series_id, calibration) for each frame that carries one (the pixel-size check)
        self.calibration_check: Callable[[int, Calibration], None] | None = None
        self._in: queue.Queue = queue.Queue(maxsize=backlog)
        self._posted: deque[list] = deque()  # messages other threads asked to send (post)
        self._previous: OrderedDict[int, tuple[int, np.ndarray]] = OrderedDict()  # series -> (epoch, last frame)
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
        self.pushed = 0  # denoised messages the PUSH socket took (publisher thread)
        self.push_lost = 0  # given up at shutdown: the consumer took nothing for push_grace s
        self.push_grace = push_grace
        self._push_progress = 0.0  # monotonic time the PUSH socket last took a message
        self._closing_at: float | None = None  # monotonic time of closing()
        self._dead = threading.Event()  # the publisher thread died: nothing waits for it any more
        self._lost_log = LogThrottle(log)
        self.push_socket: zmq.Socket | None = None
        self.push_endpoint: str | None = None
        if push is not None:
            self.push_socket = self._bind_push(ctx, push, push_hwm, configure)
            self.push_endpoint = self.push_socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def _bind_push(
        self, ctx: zmq.Context, address: str, hwm: int, configure: Callable[[zmq.Socket], None] | None
    ) -> zmq.Socket:
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.LINGER, int(self.push_grace * 1000))  # what is in flight at close gets there
        try:
            if configure is not None:
                configure(sock)  # the same CURVE server keys as the PUB output
            sock.bind(address)
        except BaseException as exc:
            sock.close(linger=0)
            self.socket.close(linger=0)
            if isinstance(exc, zmq.ZMQError):
                raise LivedenoiseError(f"cannot push on {address!r}: {exc}") from None
            raise
        return sock

    def close(self) -> None:
        """Close the sockets (the PUB one lingers ``linger_ms``, the PUSH one ``push_grace``)."""
        self.socket.close(linger=self.linger_ms)
        if self.push_socket is not None:
            self.push_socket.close()

    def closing(self) -> None:
        """Shutdown has begun: from now on a PUSH consumer that takes nothing for ``push_grace``
        seconds is given up (its messages counted ``push_lost``) instead of waited for."""
        if self._closing_at is None:
            self._closing_at = time.monotonic()

    def push_counters(self) -> dict[str, int]:
        return {"pushed": self.pushed, "push_lost": self.push_lost}

    def submit(self, batch: list) -> None:
        """Hand over one batch (blocks only if the publisher is ``backlog`` batches behind)."""
        self._put(batch)

    def finish(self) -> None:
        """Publish what was submitted, a last stats message, then stop."""
        self._put(self.STOP)

    def _put(self, item) -> None:
        # waits for room, but not for a publisher thread that has died (the item is then dropped)
        while not self._dead.is_set():
            try:
                self._in.put(item, timeout=0.1)
                return
            except queue.Full:
                pass

    def post(self, parts: list) -> None:
        """Have the publisher thread send ``parts`` soon (thread-safe; for stages with their own thread).

        Never blocks: the message waits in a list that the publisher thread empties after each
        batch; an empty batch queue gets a ``None`` item that only wakes it.
        """
        self._posted.append(parts)  # append before looking at _in: run() empties _posted after every get
        if self._in.empty():
            with contextlib.suppress(queue.Full):  # batches arrived meanwhile: the publisher wakes for them
                self._in.put_nowait(None)

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
        except BaseException:
            self._dead.set()  # the inference thread must not wait for room that never comes
            raise
        finally:
            self.close()

    def send_stats(self) -> None:
        self.socket.send_multipart([TOPIC_STATS, pack(self.stats.snapshot())])

    def _send_posted(self) -> None:
        while self._posted:
            parts = self._posted.popleft()
            try:
                self.socket.send_multipart(parts)
            except Exception:
                log.exception("sending a posted %r message failed", parts[0][:20])

    def _css_values(self, batch: list) -> list[float | None]:
        """CSS of each frame of ``batch`` against the one before it in its series' run: one
        :func:`css_chain` per run of consecutive frames of one series, epoch and shape, the first
        against the run's last frame of an earlier batch (None where there is none)."""
        values: list[float | None] = [None] * len(batch)
        previous = self._previous
        i, n = 0, len(batch)
        while i < n:
            received, out = batch[i]
            sid, epoch, shape = received.frame.series_id, received.epoch, out.shape
            j = i + 1
            while j < n and (r := batch[j][0]).frame.series_id == sid and r.epoch == epoch and batch[j][1].shape == shape:
                j += 1
            last = previous.get(sid)
            prev = last[1] if last is not None and last[0] == epoch and last[1].shape == shape else None
            outs = [o for _, o in batch[i:j]]
            if prev is not None or j - i > 1:
                chain = css_chain(prev, _rows(outs)).tolist()
                values[i:j] = chain if prev is not None else [None, *chain[1:]]
            previous[sid] = (epoch, outs[-1])
            previous.move_to_end(sid)
            if len(previous) > MAX_SERIES_TRACKED:
                previous.popitem(last=False)
            i = j
        return values

    def _publish(self, batch: list) -> None:
        # part by part (send_multipart re-checks every part and ORs IntFlags): measured 4.6 against
        # 21.5 us for a 128² frame's two messages, 13 against 50 beside two busy threads
        send = self.socket.send
        for (received, out), value in zip(batch, self._css_values(batch), strict=True):
            frame = received.frame
            sid = frame.series_id
            ids: dict[str, Any] = {"series_id": sid, "image_id": frame.image_id}
            if frame.start_time is not None:
                ids["start_time"] = frame.start_time
            calibration = frame.calibration
            if calibration is not None:
                ids["calibration"] = calibration.to_header()
                if self.calibration_check is not None:
                    self.calibration_check(sid, calibration)
            topic, head, payload = encode_published(TOPIC_RAW, ids, frame.data)
            send(topic, _MORE)
            send(head, _MORE)
            send(payload, 0, copy=payload.nbytes < ZERO_COPY_BYTES)
            now = time.perf_counter()
            latency_ms = (now - received.t_recv) * 1e3
            header = {**ids, "css": value, "latency_ms": round(latency_ms, 3)}
            message = encode_published(TOPIC_DENOISED, header, out)
            topic, head, payload = message
            send(topic, _MORE)
            send(head, _MORE)
            send(payload, 0, copy=payload.nbytes < ZERO_COPY_BYTES)
            if self.push_socket is not None:
                self._push(message)
            self.stats.record(now, latency_ms, value)
            if self.hooks:
                delivered = Delivered(
                    sid, frame.image_id, frame.data, out, value, latency_ms, frame.start_time, calibration,
                    received.epoch,
                )
                for hook in self.hooks:
                    try:
                        hook(delivered)
                    except Exception:
                        log.exception("publish hook %r failed", hook)

    def _push(self, parts: list) -> None:
        """Send one message on the PUSH output, waiting as long as the consumer is slow (that
        back-pressure is the point), stats still going out meanwhile; after :meth:`closing`, give
        up once the consumer has taken nothing for ``push_grace`` seconds."""
        sock = self.push_socket
        while True:
            try:
                sock.send_multipart(parts, zmq.NOBLOCK, copy=False)
            except zmq.Again:
                pass
            else:
                self.pushed += 1
                self._push_progress = time.monotonic()
                return
            closing = self._closing_at
            if closing is not None and time.monotonic() - max(self._push_progress, closing) > self.push_grace:
                self.push_lost += 1
                self._lost_log.warning(
                    "shutting down: the PUSH consumer took nothing for %g s; frame not pushed", self.push_grace
                )
                return
            if sock.poll(int(self.interval * 1000), zmq.POLLOUT) == 0:
                self.send_stats()  # held back: stats still say so


def _rows(frames: list[np.ndarray]) -> np.ndarray:
    """``frames`` (2-D, one shape) as one ``(n, H, W)`` array: a read-only view where they are
    consecutive rows of one buffer (the engine's output of one session run: the usual case),
    else a stacked copy."""
    first = frames[0]
    if len(frames) == 1:
        return first[None]
    base, step = first.base, first.nbytes
    if base is not None and all(f.base is base and f.flags.c_contiguous for f in frames):
        start = first.__array_interface__["data"][0]
        if all(f.__array_interface__["data"][0] == start + j * step for j, f in enumerate(frames)):
            return np.lib.stride_tricks.as_strided(
                first, (len(frames), *first.shape), (step, *first.strides), writeable=False
            )
    return np.stack(frames)
