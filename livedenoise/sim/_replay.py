"""``replay``: a detector simulator that streams a TIFF stack (or synthetic frames) over ZMQ.

It speaks the detector side of the frame protocol (``docs/protocol.md``): ``start``, the frames as
``[header, payload]``, ``end``, once per pass (each pass is a new series). Frames are paced on
absolute deadlines (frame ``i`` leaves at ``t0 + i / fps``), so the rate does not drift with
the time spent sending. When a PUSH reader holds replay back (no reader yet, or ``--lossless``
back-pressure), the clock restarts after the wait instead of bursting to catch up.

PUB (default) versus PUSH (``push``): a PUB socket sends to whoever is subscribed *now*; a
subscriber that connects later misses the first frames (ZMQ's "slow joiner"). ``wait_subscriber``
makes replay bind an XPUB socket and wait (up to that many seconds) until a subscription arrives
before the first frame. PUSH never loses a frame: sending blocks until the daemon (PULL) takes it,
so use ``push`` where exact delivery matters.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zmq

from .._options import option
from ..errors import LivedenoiseError
from ..io import read_movie, to_wire_dtype
from ..protocol import encode_end, encode_image, encode_start

log = logging.getLogger("livedenoise.sim")

DEFAULT_BIND = "tcp://127.0.0.1:5555"


@dataclass(slots=True)
class ReplayConfig:
    """What ``replay`` streams and how; each field's help is shown by ``replay --help``."""

    path: Path | None = option(None, "Multi-page TIFF to stream.")
    synthetic: bool = option(False, "Stream simulated noisy HAADF frames instead of a file.")
    fps: float = option(150.0, "Frames per second (absolute-deadline pacing).")
    bind: str = option(DEFAULT_BIND, "Address to bind, like a detector.")
    loop: bool = option(False, "Repeat the file, one series per pass.")
    push: bool = option(
        False, "Bind PUSH (for serve --pull/--lossless: no frame lost, blocks without a reader) instead of PUB."
    )
    count: int | None = option(
        None, "Stop after this many frames (default: the file once, or forever with --loop or --synthetic)."
    )
    series_id: int = option(1, "The first series id; each pass adds one.")
    wait_subscriber: float = option(0.0, "PUB: wait up to this many seconds for a subscriber before the first frame.")
    size: int = option(128, "Synthetic frame side in pixels.")
    dtype: str = option("<u2", "Synthetic frame dtype.")
    seed: int = option(0, "Synthetic movie seed.")
    linger_ms: int | None = option(
        None, "Time for queued frames to leave at the end, in ms (default: 2 s PUB, 30 s PUSH)."
    )
    curve_secret: Path | None = option(
        None, "CURVE: this program's key pair (NAME.key_secret from `livedenoise keys`); encrypts the stream."
    )
    curve_allow: Path | None = option(
        None, "CURVE: only clients with these public keys may connect (a .key file or a directory)."
    )


class Replayer:
    """Binds the detector socket (in the constructor, so a port in use fails at once) and streams.

    :meth:`run` sends until done or :meth:`stop`, and returns the number of frames sent.
    """

    def __init__(self, config: ReplayConfig, ctx: zmq.Context | None = None):
        self.config = config
        if config.fps <= 0:
            raise LivedenoiseError("--fps must be positive")
        if config.synthetic:
            self.stack = None
        elif config.path is None:
            raise LivedenoiseError("replay needs a TIFF file or --synthetic")
        else:
            self.stack = to_wire_dtype(read_movie(config.path), config.path)
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        kind = zmq.PUSH if config.push else (zmq.XPUB if config.wait_subscriber > 0 else zmq.PUB)
        self.socket = self.ctx.socket(kind)
        # PUSH: frames still queued (the reader holds replay back) are delivered, not discarded
        linger = config.linger_ms if config.linger_ms is not None else (30_000 if config.push else 2000)
        self.socket.setsockopt(zmq.LINGER, linger)
        self.curve = None
        try:
            if config.curve_secret is not None:
                from ..security import CurveServer

                self.curve = CurveServer(self.ctx, config.curve_secret, config.curve_allow)
                self.curve.apply(self.socket)
            elif config.curve_allow is not None:
                raise LivedenoiseError("--curve-allow needs --curve-secret (replay's own key pair)")
            self.socket.bind(config.bind)
        except zmq.ZMQError as exc:
            self.close()
            raise LivedenoiseError(f"cannot bind {config.bind!r}: {exc}") from None
        except BaseException:
            self.close()
            raise
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.sent = 0
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self.socket.close()
        if getattr(self, "curve", None) is not None:
            self.curve.stop()
            self.curve = None
        if self._own_ctx:
            self.ctx.term()

    def _passes(self) -> Iterator[Iterator[np.ndarray]]:
        cfg = self.config
        if self.stack is None:
            from ._movie import SimConfig, stream_frames

            yield stream_frames(SimConfig(size=cfg.size, seed=cfg.seed), dtype=cfg.dtype)
            return
        while True:
            yield iter(self.stack)
            if not cfg.loop:
                return

    def _send(self, parts) -> bool:
        """Send one message; PUSH waits for room (sets ``_held``) but gives up when stopped."""
        while not self._stop.is_set():
            if self.config.push and not self.socket.poll(0, zmq.POLLOUT):
                self._held = True
                self.socket.poll(100, zmq.POLLOUT)
                continue
            self.socket.send_multipart(parts, copy=False)
            return True
        return False

    def _wait_for_subscriber(self) -> None:
        wait = self.config.wait_subscriber
        if self.config.push or wait <= 0:
            return
        deadline = time.monotonic() + wait
        while not self._stop.is_set() and time.monotonic() < deadline:
            if self.socket.poll(50):
                self.socket.recv()  # the subscription message
                return
        log.warning("no subscriber within %.1f s; sending anyway", wait)

    def run(self) -> int:
        cfg = self.config
        try:
            self._wait_for_subscriber()
            period = 1.0 / cfg.fps
            t0 = time.perf_counter()
            n = 0  # frames sent, all passes: frame n leaves at t0 + n * period
            self._held = False
            limit = cfg.count
            for p, frames in enumerate(self._passes()):
                series = cfg.series_id + p
                if not self._send(encode_start(series, fps=cfg.fps)):
                    break
                if self._held:  # no reader yet when the series started
                    t0, self._held = time.perf_counter() - n * period, False
                for image_id, frame in enumerate(frames):
                    if self._stop.is_set() or (limit is not None and n >= limit):
                        break
                    delay = t0 + n * period - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                    parts = encode_image(frame, series_id=series, image_id=image_id, start_time=time.time_ns())
                    if not self._send(parts):
                        break
                    if self._held:  # held back by the reader (PUSH): restart the clock, no burst
                        t0, self._held = time.perf_counter() - n * period, False
                    n += 1
                    self.sent = n
                self._send(encode_end(series))
                if self._stop.is_set() or (limit is not None and n >= limit):
                    break
            return n
        finally:
            self.close()
