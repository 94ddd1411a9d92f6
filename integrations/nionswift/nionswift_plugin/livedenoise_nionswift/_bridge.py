# Copyright (C) 2025 the livedenoise authors
# SPDX-License-Identifier: GPL-3.0-or-later
"""The two ZeroMQ ends of the plug-in, each on a thread of its own, neither knowing Swift.

* :class:`Sender` takes frames from the acquisition thread without ever blocking it (a deque of a
  few frames; a full one drops its oldest and counts it) and sends them on a socket it alone
  owns: XPUB by default, so ``serve --source`` connects with its usual SUB, and with
  ``XPUB_NODROP`` a full send queue answers EAGAIN, which is counted, instead of PUB's silent
  drop. ``socket="push"`` is for ``serve --pull``: PUSH answers EAGAIN too.
* :class:`Receiver` subscribes to serve's PUB (``denoised``, ``stats``, ``atoms``) and hands
  each decoded message to a callback on its thread.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import zmq

from ._wire import TOPIC_ATOMS, TOPIC_DENOISED, TOPIC_STATS, Message, WireError, decode_message

log = logging.getLogger(__name__)

Parts = Sequence[bytes | memoryview]


@dataclass
class SenderCounts:
    queued: int = 0  # frames handed over by the tap (series start messages are not counted)
    sent: int = 0  # frames the socket took while a daemon was connected
    dropped_queue: int = 0  # frames overwritten in the hand-over queue (the socket thread fell behind)
    dropped_hwm: int = 0  # frames the socket refused (the daemon is not reading: send queue full)
    unheard: int = 0  # frames sent while no daemon was connected (XPUB: no subscriber)


class Sender:
    """Sends ``[header, payload]`` messages from a thread of its own; ``submit`` never blocks."""

    def __init__(self, address: str, *, socket: str = "pub", hwm: int = 4, queue_frames: int = 2,
                 context: zmq.Context | None = None) -> None:
        if socket not in ("pub", "push"):
            raise ValueError(f"socket must be 'pub' or 'push', not {socket!r}")
        self.counts = SenderCounts()
        self._ctx = context or zmq.Context.instance()
        self._kind = socket
        self._sock = self._ctx.socket(zmq.XPUB if socket == "pub" else zmq.PUSH)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, hwm)
        if socket == "pub":
            self._sock.setsockopt(zmq.XPUB_NODROP, 1)  # a full queue: EAGAIN (counted), not a silent drop
        try:
            self._sock.bind(address)
        except zmq.ZMQError:
            self._sock.close()
            raise
        self.endpoint: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._topics: set[bytes] = set()  # XPUB reports a topic's first subscription and its last unsubscription
        self._queue: collections.deque[tuple[Parts, bool]] = collections.deque(maxlen=max(1, queue_frames))
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="livedenoise-sender", daemon=True)
        self._thread.start()

    @property
    def connected(self) -> bool:
        """A daemon is there: subscribed (XPUB), or always for PUSH (it cannot tell)."""
        return self._kind == "push" or bool(self._topics)

    def submit(self, parts: Parts, *, frame: bool = True) -> None:
        """Queue one message (``frame=False``: not an image, not counted); a full queue drops its oldest."""
        with self._cond:
            if len(self._queue) == self._queue.maxlen and self._queue[0][1]:
                self.counts.dropped_queue += 1
            self._queue.append((parts, frame))
            if frame:
                self.counts.queued += 1
            self._cond.notify()

    def _read_subscriptions(self) -> None:
        while True:
            try:
                event = self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if event[:1] == b"\x01":
                self._topics.add(event[1:])
            elif event[:1] == b"\x00":
                self._topics.discard(event[1:])

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    if not self._queue and not self._stop:
                        self._cond.wait(0.05)  # wakes up to read subscriptions even when idle
                    if self._stop:
                        return
                    item = self._queue.popleft() if self._queue else None
                if self._kind == "pub":
                    self._read_subscriptions()
                if item is None:
                    continue
                parts, frame = item
                try:
                    self._sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    self.counts.dropped_hwm += 1 if frame else 0
                    continue
                if not frame:
                    continue
                if self.connected:
                    self.counts.sent += 1
                else:
                    self.counts.unheard += 1
        finally:
            self._sock.close()

    def close(self, timeout: float = 2.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout)


@dataclass
class ReceiverCounts:
    denoised: int = 0
    stats: int = 0
    atoms: int = 0
    malformed: int = 0
    last_stats: dict = field(default_factory=dict)


class Receiver:
    """SUB to serve's PUB; ``on_message(msg, receipt_ns)`` runs on the receiver's thread."""

    TOPICS = (TOPIC_DENOISED, TOPIC_STATS, TOPIC_ATOMS)

    def __init__(self, address: str, on_message: Callable[[Message, int], None], *,
                 context: zmq.Context | None = None) -> None:
        self.counts = ReceiverCounts()
        self._ctx = context or zmq.Context.instance()
        self._on_message = on_message
        self._address = address
        self._lock = threading.Lock()
        self._new_address: str | None = None
        self._stop = threading.Event()
        self._last_error = 0.0
        self._thread = threading.Thread(target=self._run, name="livedenoise-receiver", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return self._address

    def connect(self, address: str) -> None:
        """Follow a daemon at another address (applied within 0.1 s)."""
        with self._lock:
            self._new_address = address

    def _run(self) -> None:
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 16)  # the item shows the newest frame: a backlog would only add latency
        for topic in self.TOPICS:
            sock.setsockopt(zmq.SUBSCRIBE, topic)
        sock.connect(self._address)
        try:
            while not self._stop.is_set():
                with self._lock:
                    new, self._new_address = self._new_address, None
                if new is not None and new != self._address:
                    sock.disconnect(self._address)
                    sock.connect(new)
                    self._address = new
                if not sock.poll(100):
                    continue
                while True:
                    try:
                        parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._handle([p.buffer for p in parts])
        finally:
            sock.close()

    def _handle(self, parts: Parts) -> None:
        receipt_ns = time.time_ns()
        try:
            msg = decode_message(parts)
        except WireError as exc:
            self.counts.malformed += 1
            now = time.monotonic()
            if now - self._last_error > 5.0:  # throttled: a flood must not flood the log
                self._last_error = now
                log.warning("livedenoise: skipped a malformed message from %s: %s", self._address, exc)
            return
        if msg.topic == TOPIC_DENOISED and msg.data is not None:
            self.counts.denoised += 1
        elif msg.topic == TOPIC_STATS:
            self.counts.stats += 1
            self.counts.last_stats = msg.header
        elif msg.topic == TOPIC_ATOMS:
            self.counts.atoms += 1
        try:
            self._on_message(msg, receipt_ns)
        except Exception:  # a bug in a consumer (logged with its traceback) must not stop the receiver thread
            log.exception("livedenoise: handling a %s message failed", msg.topic.decode(errors="replace"))

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
