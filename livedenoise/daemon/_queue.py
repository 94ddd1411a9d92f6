"""The bounded queue between the receiver and the inference thread, with adaptive batching.

Live mode (default): when the queue is full the *oldest* waiting frame is dropped and counted, so
the operator always sees the newest frame, with bounded lag and memory. Lossless mode: ``put``
blocks instead, the receiver stops reading, and the PULL socket's high-water mark holds the
detector back; a frame accepted into the queue is never dropped. The receiver hands over all
that one wake-up drained with :meth:`FrameQueue.put_many` (one lock, one notification).

Adaptive batching: :meth:`FrameQueue.get_batch` returns what is queued, up to ``max_batch``, and
waits for more only until ``max_wait`` has passed since the oldest frame was queued. At low rates
a frame waits at most ``max_wait``; when frames pile up (bursts, a slow model) batches fill at
once and throughput rises.

Examples
--------
>>> q = FrameQueue(capacity=2)
>>> for item in "abc":
...     _ = q.put(item)
>>> q.dropped, q.get_batch(8, 0.0)
(1, ['b', 'c'])
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class QueueClosed(Exception):
    """``put`` on a closed queue."""


class FrameQueue(Generic[T]):
    """A bounded FIFO for one producer and one consumer thread.

    Parameters
    ----------
    capacity : most items held at once.
    lossless : block the producer when full instead of dropping the oldest item.
    max_age : live mode: items queued longer than this (seconds) are dropped when a batch is
        taken, except the newest, so lag stays bounded in time whatever the frame rate
        (with a slow model, 64 queued frames could be seconds). None: no age limit.
    """

    def __init__(self, capacity: int = 64, *, lossless: bool = False, max_age: float | None = None):
        if capacity < 1:
            raise ValueError("queue capacity must be at least 1")
        self.capacity = capacity
        self.lossless = lossless
        self.max_age = None if lossless else max_age
        self.dropped = 0  # items discarded by drop-oldest (live mode only)
        self._items: deque[tuple[float, T]] = deque()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T, timeout: float | None = None) -> bool:
        """Queue ``item``. Live mode: never blocks. Lossless mode: blocks while full.

        Returns False if ``timeout`` expired first (lossless mode; the item is *not* queued).
        Raises :class:`QueueClosed` after :meth:`close`.
        """
        return self.put_many((item,), timeout) == 1

    def put_many(self, items: Sequence[T], timeout: float | None = None) -> int:
        """Queue ``items`` in order under one lock and one wake-up (the receiver hands over all
        that one poll drained); returns how many were queued.

        Live mode: all of them, never blocks (the oldest waiting, then the oldest of ``items``,
        dropped and counted beyond ``capacity``). Lossless mode: as many as there is room for,
        waiting up to ``timeout`` (None: forever) for room for the first; 0 if none came.
        Raises :class:`QueueClosed` after :meth:`close`.
        """
        with self._lock:
            if self._closed:
                raise QueueClosed
            if self.lossless:
                if len(self._items) >= self.capacity:
                    deadline = None if timeout is None else time.monotonic() + timeout
                    while len(self._items) >= self.capacity and not self._closed:
                        remaining = None if deadline is None else deadline - time.monotonic()
                        if remaining is not None and remaining <= 0:
                            return 0
                        self._not_full.wait(remaining)
                    if self._closed:
                        raise QueueClosed
                items = items[: self.capacity - len(self._items)]
            now = time.monotonic()
            self._items.extend([(now, item) for item in items])
            excess = len(self._items) - self.capacity
            if excess > 0:  # live mode only
                for _ in range(excess):
                    self._items.popleft()
                self.dropped += excess
            self._not_empty.notify()
            return len(items)

    def get_batch(self, max_batch: int, max_wait: float, timeout: float | None = None) -> list[T] | None:
        """Up to ``max_batch`` items, oldest first.

        Waits up to ``timeout`` (None: forever) for a first item, then for more until
        ``max_wait`` seconds after the oldest one was queued (no wait if it is already older).
        Returns ``[]`` on timeout and ``None`` once the queue is closed *and* empty (drained).
        """
        with self._lock:
            if not self._items:
                if self._closed:
                    return None
                self._not_empty.wait(timeout)
                if not self._items:
                    return None if self._closed else []
            if self.max_age is not None:
                too_old = time.monotonic() - self.max_age
                while len(self._items) > 1 and self._items[0][0] < too_old:
                    self._items.popleft()
                    self.dropped += 1
            deadline = self._items[0][0] + max_wait
            while len(self._items) < max_batch and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._not_empty.wait(remaining)
            n = min(max_batch, len(self._items))
            batch = [self._items.popleft()[1] for _ in range(n)]
            self._not_full.notify_all()
            return batch

    def close(self) -> None:
        """No more ``put``; ``get_batch`` drains what is left, then returns None."""
        with self._lock:
            self._closed = True
            self._not_empty.notify_all()
            self._not_full.notify_all()
