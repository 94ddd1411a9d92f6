"""The viewer's receiving side: a thread that owns the SUB socket and keeps only what the display needs.

Nothing here imports Qt: :class:`StreamBuffer` is plain state (newest frames, counters, rolling
histories) and :class:`Receiver` is a :class:`threading.Thread` that feeds it and calls a
``notify`` callback when something new is waiting (the window passes a Qt signal's ``emit``, so
the hand-over to the GUI thread is a queued signal; no QSocketNotifier on the ZMQ descriptor).

The receiver drains the socket as fast as messages come and keeps only the newest frame pair:
a slow display drops frames here, never in the daemon (a PUB socket never waits for a subscriber)
and never accumulates lag. ``atoms`` and ``hops`` messages (``serve --atoms``) are decoded here too,
off the GUI thread; the recent ones are kept (a fixed number: bounded memory) so the window can draw
the atoms of the frame on screen, the trails of their tracks and the hops of the last second.

>>> import numpy as np
>>> from livedenoise.protocol import TOPIC_DENOISED, TOPIC_RAW, encode_published
>>> buf = StreamBuffer()
>>> frame = np.ones((4, 4), np.float32)
>>> buf.ingest_parts(encode_published(TOPIC_RAW, {"series_id": 1, "image_id": 0}, frame), now=0.0)
>>> buf.ingest_parts(encode_published(TOPIC_DENOISED, {"series_id": 1, "image_id": 0, "css": None}, frame), now=0.0)
>>> pair = buf.take_frames()
>>> pair.series_id, pair.image_id, pair.raw.shape, pair.denoised.shape
(1, 0, (4, 4), (4, 4))
>>> buf.take_frames() is None  # nothing new since the last take
True
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from ..errors import MalformedMessage
from ..protocol import (
    TOPIC_ATOMS,
    TOPIC_DENOISED,
    TOPIC_HOPS,
    TOPIC_RAW,
    TOPIC_STATS,
    AtomsMessage,
    Buffer,
    HopsMessage,
    Published,
    decode_atoms,
    decode_hops,
    decode_published,
)
from ._overlay import WEAK_Z, weak_mask

#: Topics the viewer subscribes to.
SUBSCRIBED: tuple[bytes, ...] = (TOPIC_RAW, TOPIC_DENOISED, TOPIC_STATS, TOPIC_ATOMS, TOPIC_HOPS)

#: Stats fields kept as time series for the throughput and latency plots.
STATS_SERIES: tuple[str, ...] = ("fps_in", "fps_out", "latency_ms_p50", "latency_ms_p99", "css", "score_db", "score_filter_db")


@dataclass(frozen=True, slots=True)
class FramePair:
    """The newest frame to display: raw and denoised of the same ``image_id`` where both arrived.

    Either image may be ``None`` (a stream that only carries one topic).
    """

    series_id: int | None
    image_id: int | None
    raw: np.ndarray | None
    denoised: np.ndarray | None
    raw_header: dict[str, Any] = field(default_factory=dict)
    denoised_header: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class History:
    """Copies of the rolling histories, as arrays ready to plot (times in s since the buffer began)."""

    css_t: np.ndarray
    css: np.ndarray
    stats_t: np.ndarray
    stats: dict[str, np.ndarray]
    atoms_t: np.ndarray = field(default_factory=lambda: np.empty(0))  # one point per atoms message
    atoms: np.ndarray = field(default_factory=lambda: np.empty(0))  # its count
    atoms_weak: np.ndarray = field(default_factory=lambda: np.empty(0))  # its weak atoms (NaN: no evidence)

    @property
    def atoms_supported(self) -> np.ndarray:
        """Atoms per message that are not weak (all of them where the daemon sent no evidence)."""
        return self.atoms - np.nan_to_num(self.atoms_weak)


def _ids(msg: Published) -> tuple[Any, Any]:
    return msg.header.get("series_id"), msg.header.get("image_id")


class StreamBuffer:
    """Thread-safe holder of the newest frames, counters and histories (no sockets, no Qt).

    Parameters
    ----------
    history:
        How many per-frame CSS values and stats messages to keep for the plots.
    pairing:
        How many recent frames per topic are remembered to pair raw with denoised by id.
    atoms_kept:
        How many recent ``atoms`` messages are remembered to find those of the frame on screen
        (they arrive a little after their frame) and the trails of their tracks.
    hops_kept:
        How many recent ``hops`` messages are remembered (each lists at most ``MAX_HOPS``).
    """

    def __init__(self, history: int = 3000, pairing: int = 16, atoms_kept: int = 64, hops_kept: int = 64) -> None:
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self._recent: dict[bytes, deque[Published]] = {
            TOPIC_RAW: deque(maxlen=pairing),
            TOPIC_DENOISED: deque(maxlen=pairing),
        }
        self._version = 0  # bumped by every frame; take_frames() returns only when it moved
        self._taken = 0
        self._pending = False  # a notification is on its way to the GUI and not yet taken
        self._css: deque[tuple[float, float]] = deque(maxlen=history)
        self._stats: deque[tuple[float, dict[str, Any]]] = deque(maxlen=history)
        self._atoms: deque[AtomsMessage] = deque(maxlen=atoms_kept)
        self._atoms_count: deque[tuple[float, int, float]] = deque(maxlen=history)  # t, count, weak
        self.atoms_version = 0  # bumped by every atoms message (the window redraws the overlay then)
        self._hops: deque[tuple[float, HopsMessage]] = deque(maxlen=hops_kept)  # (received, message)
        self.hops_version = 0  # bumped by every hops message
        self.hops_heard = 0  # hop events (the messages' counts)
        self.counts: Counter[str] = Counter()  # messages per topic name, plus "malformed"
        self.last_stats: dict[str, Any] = {}
        self.last_atoms: AtomsMessage | None = None
        self.last_message: float | None = None  # monotonic time of the newest message

    # ------------------------------------------------------------------ receiver side

    def ingest_parts(self, parts: Sequence[Buffer], now: float | None = None) -> None:
        """Decode one multipart message and keep it; a bad message is counted, never raised."""
        try:
            msg = decode_published(parts)
        except MalformedMessage:
            with self._lock:
                self.counts["malformed"] += 1
            return
        self.ingest(msg, time.monotonic() if now is None else now)

    def ingest(self, msg: Published, now: float) -> None:
        atoms = hops = None
        try:
            if msg.topic == TOPIC_ATOMS:
                atoms = decode_atoms(msg)
            elif msg.topic == TOPIC_HOPS:
                hops = decode_hops(msg)
        except MalformedMessage:
            with self._lock:
                self.counts["malformed"] += 1
            return
        with self._lock:
            self.last_message = now
            self.counts[msg.topic.decode("ascii", "replace")] += 1
            if msg.topic in self._recent and msg.data is not None:
                self._recent[msg.topic].append(msg)
                self._version += 1
                css = msg.header.get("css")
                if msg.topic == TOPIC_DENOISED and isinstance(css, int | float):
                    self._css.append((now - self._t0, float(css)))
            elif msg.topic == TOPIC_STATS:
                self.last_stats = msg.header
                self._stats.append((now - self._t0, msg.header))
            elif atoms is not None:
                self.last_atoms = atoms
                self._atoms.append(atoms)
                self._atoms_count.append((now - self._t0, atoms.count, weak_count(atoms)))
                self.atoms_version += 1
            elif hops is not None:
                self._hops.append((now, hops))
                self.hops_version += 1
                self.hops_heard += hops.count

    def claim_notification(self) -> bool:
        """True once per batch of new frames: the receiver then notifies the GUI (coalescing)."""
        with self._lock:
            if self._pending or self._version == self._taken:
                return False
            self._pending = True
            return True

    # ------------------------------------------------------------------ GUI side

    def take_frames(self) -> FramePair | None:
        """The newest raw/denoised pair, or ``None`` if no frame arrived since the last take.

        The pair is the newest ``(series_id, image_id)`` present on both topics among the recent
        ones (the daemon publishes the two topics of a frame back to back, in either order);
        where none matches, the newest frame of each topic.
        """
        with self._lock:
            self._pending = False
            if self._version == self._taken:
                return None
            self._taken = self._version
            raws, dens = self._recent[TOPIC_RAW], self._recent[TOPIC_DENOISED]
            raw = raws[-1] if raws else None
            den = dens[-1] if dens else None
            if raw is not None and den is not None and _ids(raw) != _ids(den):
                raw_by_id = {_ids(m): m for m in raws}
                match = next((m for m in reversed(dens) if _ids(m) in raw_by_id), None)
                if match is not None:
                    den, raw = match, raw_by_id[_ids(match)]
        newest = den if den is not None else raw
        assert newest is not None
        series_id, image_id = _ids(newest)
        return FramePair(
            series_id,
            image_id,
            None if raw is None else raw.data,
            None if den is None else den.data,
            {} if raw is None else raw.header,
            {} if den is None else den.header,
        )

    def atoms_for(self, series_id: Any, image_id: Any, max_behind: int = 10) -> AtomsMessage | None:
        """The atoms of frame ``(series_id, image_id)``; while they have not arrived, the newest
        atoms of one of the ``max_behind`` frames before it in the same series; else None."""
        with self._lock:
            earlier = None
            for atoms in reversed(self._atoms):  # newest first
                if atoms.series_id != series_id:
                    continue
                if atoms.image_id == image_id:
                    return atoms
                if earlier is None and isinstance(image_id, int) and 0 < image_id - atoms.image_id <= max_behind:
                    earlier = atoms
            return earlier

    def atoms_history(self, series_id: Any, image_id: Any, frames: int) -> list[AtomsMessage]:
        """The atoms messages kept of series ``series_id`` for the ``frames`` frames up to ``image_id``
        (the trails of the tracks on screen are drawn from them)."""
        if not isinstance(image_id, int):
            return []
        with self._lock:
            return [
                a for a in self._atoms if a.series_id == series_id and image_id - frames < a.image_id <= image_id
            ]

    def recent_hops(self, series_id: Any, now: float, span: float) -> list[tuple[float, HopsMessage]]:
        """``(age in s, message)`` of the hops of series ``series_id`` received in the last ``span`` s."""
        with self._lock:
            return [(now - t, h) for t, h in self._hops if h.series_id == series_id and now - t < span]

    def history(self) -> History:
        with self._lock:
            css = list(self._css)
            stats = list(self._stats)
            atoms = list(self._atoms_count)
        css_arr = np.array(css, dtype=np.float64).reshape(-1, 2)
        atoms_arr = np.array(atoms, dtype=np.float64).reshape(-1, 3)
        series = {
            key: np.array([_number(h.get(key)) for _, h in stats], dtype=np.float64) for key in STATS_SERIES
        }
        return History(
            css_arr[:, 0], css_arr[:, 1], np.array([t for t, _ in stats], np.float64), series,
            atoms_arr[:, 0], atoms_arr[:, 1], atoms_arr[:, 2],
        )

    def idle_for(self, now: float | None = None) -> float:
        """Seconds since the newest message (infinite before the first one)."""
        last = self.last_message
        if last is None:
            return float("inf")
        return (time.monotonic() if now is None else now) - last

    def elapsed(self, now: float | None = None) -> float:
        """Seconds since the buffer began (the plots' time axis)."""
        return (time.monotonic() if now is None else now) - self._t0


def weak_count(atoms: AtomsMessage) -> float:
    """The weak atoms of a frame: the daemon's ``weak`` where it sent one, else counted from the
    evidence listed; NaN when there is no evidence at all (an older daemon)."""
    if atoms.weak is not None:
        return float(atoms.weak)
    if atoms.evidence is not None:
        return float(np.count_nonzero(weak_mask(atoms.evidence, WEAK_Z if atoms.weak_z is None else atoms.weak_z)))
    return np.nan


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else np.nan


class Receiver(threading.Thread):
    """Owns a SUB socket connected to the daemon's ``--publish`` address; feeds a :class:`StreamBuffer`.

    The socket is created, used and closed in this thread only (ZMQ sockets are not thread-safe).
    ZMQ reconnects by itself when the daemon restarts, so the receiver just keeps polling.

    Parameters
    ----------
    address:
        The daemon's publish address, e.g. ``tcp://127.0.0.1:5556``.
    buffer:
        Where messages go; the GUI reads it.
    notify:
        Called (from this thread) when new frames wait in ``buffer`` and the previous notification
        was taken; the window passes a Qt signal's ``emit``.
    rcvhwm:
        Receive high-water mark in messages: bounds what queues on the viewer side.
    """

    POLL_MS = 50
    MAX_DRAIN = 4096  # messages per drain before notifying, so a flood still reaches the GUI

    def __init__(
        self,
        address: str,
        buffer: StreamBuffer,
        notify: Callable[[], None] = lambda: None,
        rcvhwm: int = 256,
    ) -> None:
        super().__init__(name=f"livedenoise-view-recv {address}", daemon=True)
        self.address = address
        self.buffer = buffer
        self._notify = notify
        self._rcvhwm = rcvhwm
        self._stop_event = threading.Event()
        self._ready = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.SUB)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, self._rcvhwm)
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
            for topic in SUBSCRIBED:
                sock.setsockopt(zmq.SUBSCRIBE, topic)
            sock.connect(self.address)
            self._ready.set()
            while not self._stop_event.is_set():
                if not sock.poll(self.POLL_MS, zmq.POLLIN):
                    continue
                for _ in range(self.MAX_DRAIN):
                    try:
                        parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self.buffer.ingest_parts([p.buffer for p in parts])
                if self.buffer.claim_notification():
                    self._notify()
        except BaseException as exc:  # noqa: BLE001 - surfaced by the window's status line, never silent
            self.error = exc
        finally:
            self._ready.set()
            sock.close(0)
            ctx.term()

    def wait_ready(self, timeout: float = 5.0) -> None:
        """Block until the socket is connected (or the thread failed: then raise its error)."""
        self._ready.wait(timeout)
        if self.error is not None:
            raise self.error

    def stop(self, timeout: float = 2.0) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout)
