"""A subscriber to the daemon's output whose every receive has a timeout, so a test never hangs."""

from __future__ import annotations

import time
from collections.abc import Callable

import zmq

from livedenoise.protocol import Published, decode_published


class Subscriber:
    """A SUB socket on the daemon's output (``topics``: all by default), keeping every message."""

    def __init__(self, address: str, topics: tuple[bytes, ...] = (b"",)):
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)  # keep everything: tests count every frame
        for t in topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, t)
        self.sock.connect(address)
        self.last_stats: dict | None = None
        self._pending: list[Published] = []  # frames read while waiting for stats, handed out by collect()
        self.others: list[Published] = []  # what collect() read of topics other than denoised, raw, stats

    def recv(self, timeout: float = 5.0) -> Published | None:
        """The next message, or None after ``timeout`` seconds."""
        if not self.sock.poll(int(timeout * 1000)):
            return None
        msg = decode_published(self.sock.recv_multipart())
        if msg.topic == b"stats":
            self.last_stats = msg.header
        return msg

    def wait_ready(self, timeout: float = 10.0) -> dict:
        """Block until a stats message arrives: the subscription is then in effect (slow joiner)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.recv(0.2)
            if msg is not None and msg.topic == b"stats":
                return msg.header
        raise AssertionError("no stats message from the daemon")

    def collect(
        self, n_denoised: int, timeout: float = 20.0, idle: float | None = None
    ) -> tuple[list[Published], list[Published]]:
        """Messages until ``n_denoised`` denoised frames arrived (or ``timeout``, or ``idle``
        seconds without a denoised frame). Returns ``(denoised, raw)`` lists."""
        denoised: list[Published] = []
        raw: list[Published] = []
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while len(denoised) < n_denoised and time.monotonic() < deadline:
            if idle is not None and time.monotonic() - last > idle:
                break
            msg = self._pending.pop(0) if self._pending else self.recv(0.2)
            if msg is None:
                continue
            if msg.topic == b"denoised":
                denoised.append(msg)
                last = time.monotonic()
            elif msg.topic == b"raw":
                raw.append(msg)
            elif msg.topic != b"stats":
                self.others.append(msg)
        return denoised, raw

    def stats_until(self, predicate: Callable[[dict], bool], timeout: float = 10.0) -> dict:
        """Read until a stats header satisfies ``predicate``; return it (AssertionError if never).
        Frames read meanwhile are kept for :meth:`collect`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.recv(0.2)
            if msg is None:
                continue
            if msg.topic != b"stats":
                self._pending.append(msg)
            elif predicate(msg.header):
                return msg.header
        raise AssertionError(f"stats never satisfied the condition; last: {self.last_stats}")

    def close(self) -> None:
        self.sock.close()
