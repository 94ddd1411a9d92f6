"""The receiving stage: the detector's ZMQ stream into the frame queue.

One thread owns the input socket: SUB by default (the detector binds PUB), PULL with ``pull``
(detectors that bind PUSH, and ``--lossless``). Messages are received without copying
(``recv_multipart(copy=False)``) and decoded by :func:`~livedenoise.protocol.decode_detector_message`
into read-only numpy views on the ZMQ buffers; nothing else touches the pixels here.

Bad messages are logged (throttled) and counted as ``malformed``; the receiver keeps going.
Series are tracked: a new ``series_id`` is logged, and so is a gap in ``image_id`` within a series
(counted as ``gaps``), loudly rather than silently.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import NamedTuple

import zmq

from .batcher import FrameQueue, QueueClosed
from .errors import LivedenoiseError, MalformedMessage
from .protocol import DEFAULT_LIMITS, ImageFrame, Limits, SeriesEnd, SeriesStart, decode_detector_message

log = logging.getLogger("livedenoise.source")


class Received(NamedTuple):
    """A decoded frame and when it was received (``time.perf_counter()`` seconds)."""

    frame: ImageFrame
    t_recv: float


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


class Source:
    """Receives detector messages and feeds a :class:`~livedenoise.batcher.FrameQueue`.

    The socket is created and connected here, in the caller's thread, so a bad address fails at
    once; afterwards only the receiver thread (:meth:`run`) uses it.

    Counters (each written by the receiver thread only): ``received`` (valid image frames),
    ``malformed`` (rejected messages), ``gaps`` (image-id discontinuities within a series).
    """

    def __init__(
        self,
        ctx: zmq.Context,
        address: str,
        queue: FrameQueue[Received],
        *,
        pull: bool = False,
        rcvhwm: int = 1000,
        limits: Limits = DEFAULT_LIMITS,
    ):
        self.address = address
        self.queue = queue
        self.pull = pull
        self.limits = limits
        self.received = 0
        self.malformed = 0
        self.gaps = 0
        self.series_id: int | None = None
        self._last_image_id: int | None = None
        self._stop = threading.Event()
        self._bad = LogThrottle(log)
        self._gap_log = LogThrottle(log)
        self.socket = ctx.socket(zmq.PULL if pull else zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVHWM, rcvhwm)
        if not pull:
            self.socket.setsockopt(zmq.SUBSCRIBE, b"")
        try:
            self.socket.connect(address)
        except zmq.ZMQError as exc:
            self.socket.close()
            raise LivedenoiseError(f"cannot connect to detector address {address!r}: {exc}") from None

    def stop(self) -> None:
        """Stop receiving (the thread finishes the message in hand, then closes the socket)."""
        self._stop.set()

    def run(self) -> None:
        sock = self.socket
        try:
            while not self._stop.is_set():
                if not sock.poll(100):
                    continue
                parts = sock.recv_multipart(copy=False)
                t_recv = time.perf_counter()
                try:
                    msg = decode_detector_message(parts, self.limits)
                except MalformedMessage as exc:
                    self.malformed += 1
                    self._bad.warning("malformed message rejected: %s", exc)
                    continue
                if type(msg) is ImageFrame:
                    self._track(msg)
                    self.received += 1
                    self._enqueue(Received(msg, t_recv))
                elif type(msg) is SeriesStart:
                    log.info("series %d: start", msg.series_id)
                    self.series_id, self._last_image_id = msg.series_id, None
                elif type(msg) is SeriesEnd:
                    log.info("series %d: end after image %s", msg.series_id, self._last_image_id)
        except QueueClosed:
            pass
        finally:
            sock.close(linger=0)
            self.queue.close()  # the inference thread drains what is queued, then ends

    def _enqueue(self, item: Received) -> None:
        # Lossless: wait for room however long it takes (the inference thread drains the queue,
        # also during shutdown); a frame taken off the socket is never dropped.
        while not self.queue.put(item, timeout=0.1):
            pass

    def _track(self, frame: ImageFrame) -> None:
        if frame.series_id != self.series_id:
            if self.series_id is not None:
                log.info("series %d -> %d (image %d)", self.series_id, frame.series_id, frame.image_id)
            self.series_id = frame.series_id
        elif self._last_image_id is not None and frame.image_id != self._last_image_id + 1:
            self.gaps += 1
            self._gap_log.warning(
                "series %d: image id %d after %d (%d missing)",
                frame.series_id,
                frame.image_id,
                self._last_image_id,
                frame.image_id - self._last_image_id - 1,
            )
        self._last_image_id = frame.image_id
