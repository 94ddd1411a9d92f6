"""The receiving stage: the detector's ZMQ stream into the frame queue.

One thread owns the input socket: SUB by default (the detector binds PUB), PULL with ``pull``
(detectors that bind PUSH, and ``--lossless``). Messages are received without copying
(``recv_multipart(copy=False)``) and handed to a *decoder*: :class:`NativeDecoder` (the
livedenoise protocol, :func:`~livedenoise.protocol.decode_detector_message`: read-only numpy views
on the ZMQ buffers, nothing else touches the pixels here) or another stream's, such as
:class:`~livedenoise.detectors.DectrisDecoder` (``serve --source-format dectris``). A decoder's
``feed(parts)`` returns the messages the parts complete, however the sender grouped its parts,
and :class:`~livedenoise.detectors.Skip` entries for what it passed over.

Bad messages are logged (throttled) and counted as ``malformed``; the receiver keeps going. So
are a decoder's skips: ``malformed``, ``gaps`` (added to the receiver's own), and
``incomplete`` (scan frames a series ended before: ``scan_incomplete`` in the stats). A decoder's
:class:`~livedenoise.detectors.VirtualImage` (the virtual detectors after the first) goes to
:attr:`Receiver.on_virtual` (``serve`` publishes it on ``virtual``). A decoder that receives in a
process of its own (:class:`~livedenoise.detectors.LibertemReceiver`) names the ``endpoint`` the
socket connects to instead of the detector, and is closed with the receiver.
Series are tracked: a new ``series_id`` is logged, and so is a gap in ``image_id`` within a series
(counted as ``gaps``), loudly rather than silently. Every frame carries its series' *epoch*
(:attr:`Received.epoch`), a counter the receiver advances at each ``start`` message (a series
restarted under the same id included) and each change of ``series_id``: whatever carries history
from frame to frame (a multi-frame model's window, CSS against the previous frame) starts afresh
where the epoch changes. An epoch rather than a flag on the first frame: in live mode the queue
may drop that frame, and the next one must still start the new run.

Each wake-up drains what the socket holds, up to ``drain`` messages (``NOBLOCK``; as the viewer's
receiver does), and hands the frames to the queue at once (:meth:`FrameQueue.put_many`, one lock
and one wake-up): measured with ``benchmarks/ceiling.py``, a poll per message cost ~100 us of the
receiver's time under load, most of it waiting to get the GIL back.

Sizes are capped inside libzmq too: ``ZMQ_MAXMSGSIZE`` is set to the largest legal message part
(:func:`max_part_bytes`: a full-size ``<f4`` frame), so an oversized part is never allocated.
libzmq's answer to an oversized part is to drop that connection as a *protocol error* (the part
and whatever else was in flight on it are lost; nothing reaches the application) and, unlike
after a network error, it does not reconnect: one oversized part would silence the input for
good. The receiver therefore watches the socket (a ZMQ socket monitor): a disconnection that is
not followed by libzmq's own reconnection attempt within :data:`REARM_AFTER_S` is repaired by
reconnecting the endpoint itself. Disconnections are counted (``disconnects`` in the stats).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import zmq

from .._stage import LogThrottle
from ..detectors import DectrisConfig, Skip, VirtualImage
from ..detectors.dectris import make_decoder as dectris_decoder
from ..errors import LivedenoiseError, MalformedMessage
from ..protocol import (
    DEFAULT_LIMITS,
    SUPPORTED_DTYPES,
    Buffer,
    DetectorMessage,
    ImageFrame,
    Limits,
    SeriesEnd,
    SeriesStart,
    decode_detector_message,
)
from ._queue import FrameQueue, QueueClosed

log = logging.getLogger("livedenoise.daemon")


def max_part_bytes(limits: Limits = DEFAULT_LIMITS) -> int:
    """The largest legal message part: a header, or a ``max_pixels`` frame of the widest dtype."""
    import numpy as np

    widest = max(np.dtype(d).itemsize for d in SUPPORTED_DTYPES)
    return max(limits.max_header_bytes, limits.max_pixels * widest)


_NOBLOCK = int(zmq.NOBLOCK)
REARM_AFTER_S = 0.5  # a disconnection without libzmq reconnecting by then: reconnect ourselves


class Received(NamedTuple):
    """A decoded frame, when it was received (``time.perf_counter()`` seconds) and its series'
    epoch (a new one after each ``start`` message or change of series id)."""

    frame: ImageFrame
    t_recv: float
    epoch: int = 0



class Decoder(Protocol):
    """The receiver's decoding step: the parts of one ZeroMQ message in, the messages they
    complete out (with :class:`Skip` and :class:`VirtualImage` entries); :class:`MalformedMessage`
    for a message it rejects whole. ``counters()``: more figures for the stats (none for the native
    protocol). Optional: ``endpoint`` (connect there, not to the source) and ``close()``."""

    def feed(self, parts: Sequence[Buffer]) -> Sequence[DetectorMessage | Skip]: ...

    def counters(self) -> dict[str, int]: ...


class NativeDecoder:
    """The livedenoise frame protocol (``docs/protocol.md``): one message, one detector message."""

    __slots__ = ("limits",)

    def __init__(self, limits: Limits = DEFAULT_LIMITS):
        self.limits = limits

    def feed(self, parts: Sequence[Buffer]) -> tuple[DetectorMessage]:
        return (decode_detector_message(parts, self.limits),)

    def counters(self) -> dict[str, int]:
        return {}


def make_decoder(
    dectris: DectrisConfig | None, limits: Limits = DEFAULT_LIMITS, source: str | None = None
) -> tuple[Decoder | None, int | None]:
    """The decoder ``serve`` reads its source with, and the largest message part to accept: the
    native protocol's (``None, None``), or a DECTRIS stream's (a v2 message carries every channel:
    up to 4 frames), the decoder its detector picks (:func:`livedenoise.detectors.dectris.make_decoder`:
    Python or libertem-dectris; fails here, not in the receiver thread, where it cannot be made)."""
    if dectris is None:
        return None, None
    return dectris_decoder(dectris, limits, source), 4 * max_part_bytes(limits) + limits.max_header_bytes


MAX_EPOCHS_TRACKED = 64  # series whose last epoch restarts() remembers (more than any history kept)


def restarts(batch: Sequence[Received], epochs: dict[int, int]) -> list[bool]:
    """Per frame of ``batch``: does its series start afresh there (an epoch other than the last
    one seen for that series id, or a series not seen yet)? ``epochs`` (series id -> last epoch,
    the caller's, kept across batches) is updated, the most recent :data:`MAX_EPOCHS_TRACKED` kept.

    >>> frame = lambda sid: ImageFrame(sid, 0, None)
    >>> epochs = {}
    >>> restarts([Received(frame(1), 0.0, 1), Received(frame(1), 0.0, 1), Received(frame(1), 0.0, 2)], epochs)
    [True, False, True]
    """
    flags = []
    for r in batch:
        sid = r.frame.series_id
        flags.append(epochs.pop(sid, None) != r.epoch)
        epochs[sid] = r.epoch  # re-inserted: the dict's order is recency
    while len(epochs) > MAX_EPOCHS_TRACKED:
        del epochs[next(iter(epochs))]
    return flags


class Receiver:
    """What every receiving stage shares: its counters, series tracking and epochs, the decoder's
    skips, and handing frames to the queue (:meth:`_accept`, :meth:`_enqueue`). Subclasses read
    their input in :meth:`run` (:class:`Source`: a ZeroMQ socket; the Merlin's: its data port).

    Counters (each written by the receiver thread only): ``received`` (valid image frames),
    ``malformed`` (rejected messages), ``gaps`` (image-id discontinuities within a series),
    ``incomplete`` (scan frames a decoder gave up on), ``disconnects`` (connections to the detector
    lost), ``virtual`` (a virtual detector's other images, handed to :attr:`on_virtual`).
    """

    def __init__(self, queue: FrameQueue[Received], limits: Limits = DEFAULT_LIMITS):
        self.queue = queue
        self.limits = limits
        self.received = 0
        self.malformed = 0
        self.gaps = 0
        self.incomplete = 0
        self.disconnects = 0
        self.virtual = 0
        self.on_virtual: Callable[[VirtualImage], None] | None = None  # serve: publish on 'virtual'
        self.series_id: int | None = None
        self.epoch = 0  # advanced by each start message and change of series id
        self._last_image_id: int | None = None
        self._stop = threading.Event()
        self._bad = LogThrottle(log)
        self._gap_log = LogThrottle(log)
        self._conn_log = LogThrottle(log)

    def counters(self) -> dict[str, int]:
        """``scan_incomplete`` and ``virtual_images``, for the stats of a detector's own stream."""
        return {"scan_incomplete": self.incomplete, "virtual_images": self.virtual}

    def stop(self) -> None:
        """Stop receiving (the thread finishes the message in hand, then closes its input)."""
        self._stop.set()

    def close(self) -> None:
        """Release the input where :meth:`run` never started."""

    def run(self) -> None:
        raise NotImplementedError

    def _accept(self, msgs: Sequence[DetectorMessage | Skip], t_recv: float, items: list[Received]) -> None:
        """A decoder's messages: frames into ``items`` (counted, tracked), series starts and ends
        logged, skips counted."""
        for msg in msgs:
            kind = type(msg)
            if kind is ImageFrame:
                self._track(msg)
                self.received += 1
                items.append(Received(msg, t_recv, self.epoch))
            elif kind is SeriesStart:
                log.info("series %d: start", msg.series_id)
                self.series_id, self._last_image_id = msg.series_id, None
                self.epoch += 1
            elif kind is SeriesEnd:
                log.info("series %d: end after image %s", msg.series_id, self._last_image_id)
            elif kind is Skip:
                self._skip(msg)
            elif kind is VirtualImage:
                self.virtual += 1
                if self.on_virtual is not None:
                    self.on_virtual(msg)

    def _skip(self, skip: Skip) -> None:
        """A decoder's skipped input: counted by kind, logged (throttled)."""
        if skip.kind == "gaps":
            self.gaps += skip.count
            self._gap_log.warning("%s", skip.reason)
        elif skip.kind == "incomplete":
            self.incomplete += skip.count
            self._gap_log.warning("%s", skip.reason)
        elif skip.kind == "disconnects":
            self.disconnects += skip.count
            self._conn_log.warning("%s", skip.reason)
        else:
            self.malformed += skip.count
            self._bad.warning("malformed input skipped: %s", skip.reason)

    def _enqueue(self, items: list[Received]) -> None:
        # Lossless: wait for room however long it takes (the inference thread drains the queue,
        # also during shutdown); a frame taken off the socket is never dropped.
        while items:
            items = items[self.queue.put_many(items, timeout=0.1) :]

    def _track(self, frame: ImageFrame) -> None:
        if frame.series_id != self.series_id:
            if self.series_id is not None:
                log.info("series %d -> %d (image %d)", self.series_id, frame.series_id, frame.image_id)
            self.series_id = frame.series_id
            self.epoch += 1
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


class Source(Receiver):
    """Receives detector messages and feeds a :class:`~livedenoise.daemon.FrameQueue`.

    The socket is created and connected here, in the caller's thread, so a bad address fails at
    once; afterwards only the receiver thread (:meth:`run`) uses it.

    Counters: :class:`Receiver`'s. ``decoder``: :class:`NativeDecoder` by default; ``max_part``:
    the largest message part libzmq accepts (default :func:`max_part_bytes`).
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
        configure: Callable[[zmq.Socket], None] | None = None,
        drain: int = 32,
        decoder: Decoder | None = None,
        max_part: int | None = None,
    ):
        super().__init__(queue, limits)
        relay = getattr(decoder, "endpoint", None)  # a decoder receiving in a process of its own
        if relay is not None:
            if configure is not None:
                log.warning("the DECTRIS receiver process connects to %s without CURVE", address)
            address, configure = relay, None
        self.address = address
        self.drain = max(1, drain)  # messages taken per wake-up at most
        self.pull = pull
        self.decoder: Decoder = decoder if decoder is not None else NativeDecoder(limits)
        self.socket = ctx.socket(zmq.PULL if pull else zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVHWM, rcvhwm)
        self.socket.setsockopt(zmq.MAXMSGSIZE, max_part or max_part_bytes(limits))
        if not pull:
            self.socket.setsockopt(zmq.SUBSCRIBE, b"")
        try:
            if configure is not None:
                configure(self.socket)  # e.g. CURVE client keys (livedenoise.security)
            self.socket.connect(address)
        except LivedenoiseError:
            self.socket.close()
            raise
        except zmq.ZMQError as exc:
            self.socket.close()
            raise LivedenoiseError(f"cannot connect to detector address {address!r}: {exc}") from None

    def counters(self) -> dict[str, int]:
        """The decoder's figures and ``scan_incomplete``, for the stats (a non-native decoder)."""
        return {**super().counters(), **self.decoder.counters()}

    def close(self) -> None:
        self.socket.close(linger=0)
        self._close_decoder()

    def _close_decoder(self) -> None:
        close = getattr(self.decoder, "close", None)
        if close is not None:
            close()

    def run(self) -> None:
        from zmq.utils.monitor import recv_monitor_message

        sock = self.socket
        monitor = sock.get_monitor_socket(
            zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_CONNECT_DELAYED
        )
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        rearm_at: float | None = None
        try:
            while not self._stop.is_set():
                ready = dict(poller.poll(100))
                if monitor in ready:
                    event = recv_monitor_message(monitor)["event"]
                    if event == zmq.EVENT_DISCONNECTED:
                        self.disconnects += 1
                        rearm_at = time.monotonic() + REARM_AFTER_S
                        self._conn_log.warning("detector connection %s lost; waiting for it to come back", self.address)
                    else:  # libzmq is (re)connecting by itself
                        rearm_at = None
                if rearm_at is not None and time.monotonic() >= rearm_at:
                    rearm_at = None
                    self._rearm()
                if sock not in ready:
                    continue
                items = self._drain(sock)
                if items:
                    self._enqueue(items)
        except QueueClosed:
            pass
        finally:
            sock.disable_monitor()
            monitor.close(linger=0)
            sock.close(linger=0)
            self._close_decoder()
            self.queue.close()  # the inference thread drains what is queued, then ends

    def _rearm(self) -> None:
        """libzmq gave the endpoint up (a protocol error such as an oversized part): connect again."""
        self._conn_log.warning(
            "reconnecting to %s (libzmq gave it up: an oversized message, or authentication refused)", self.address
        )
        with contextlib.suppress(zmq.ZMQError):  # already gone
            self.socket.disconnect(self.address)
        self.socket.connect(self.address)

    def _drain(self, sock: zmq.Socket) -> list[Received]:
        """Decode what the socket holds, up to ``drain`` messages, without waiting."""
        items: list[Received] = []
        feed, recv = self.decoder.feed, sock.recv
        try:
            for _ in range(self.drain):
                # part by part rather than recv_multipart (its RCVMORE queries and IntFlag arithmetic):
                # 1.8-3.3 against 6.6 us a message, measured; the parts after the first are there at
                # once, ZMQ delivers a multipart message whole
                try:
                    part = recv(_NOBLOCK, copy=False)
                except zmq.Again:
                    break
                parts = [part]
                while part.more:
                    part = recv(0, copy=False)
                    parts.append(part)
                t_recv = time.perf_counter()
                try:
                    msgs = feed(parts)
                except MalformedMessage as exc:
                    self.malformed += 1
                    self._bad.warning("malformed message rejected: %s", exc)
                    continue
                self._accept(msgs, t_recv, items)
        except BaseException:
            if items:  # counted as received already: queue them before the failure surfaces
                with contextlib.suppress(QueueClosed):
                    self._enqueue(items)
            raise
        return items
