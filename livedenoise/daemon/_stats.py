"""The daemon's counters and sliding-window rates, published on the ``stats`` topic."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from ..engine import PIXEL_SIZE_TOLERANCE, pixel_size_differs

STATS_WINDOW_S = 1.0


class Stats:
    """The daemon's counters and sliding-window rates, readable from any thread.

    Each counter has one writer thread (the receiver, the inference thread or the publisher),
    so plain ``+=`` is safe; :meth:`snapshot` sums and derives the published figures.
    """

    def __init__(self, *, model: str = "", provider: str = "", source=None, frame_queue=None):
        self.model, self.provider = model, provider
        self.source = source  # has .received .malformed .gaps
        self.queue = frame_queue  # has .dropped and len()
        self.nonfinite_frames = 0  # frames with NaN/inf pixels, refused by the engine (inference thread)
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
            "malformed": (self.source.malformed if self.source else 0) + self.nonfinite_frames,
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


class CalibrationCheck:
    """Warns when a stream's pixel size differs from the one the model was trained at.

    Noise2Atom learns atoms of a given size in pixels: frames at another magnification get
    atoms of another size, and the denoiser may smear or invent them. The model card's
    ``pixel_size_nm`` (the training frames') is compared with each frame's ``calibration``
    header field; a difference over ``tolerance`` (relative) is logged once per series and
    every such frame counted (``calibration_mismatch`` in ``stats``). Frames without a pixel
    size are not judged. Called in the publisher thread: a float comparison per frame.

    >>> check = CalibrationCheck(0.1)
    >>> from livedenoise.protocol import Calibration
    >>> check(1, Calibration(0.104)); check(1, Calibration(0.2)); check.counters()
    {'calibration_mismatch': 1}
    """

    MAX_SERIES_WARNED = 1024  # series ids remembered as already warned about (then forgotten, oldest first)

    def __init__(
        self, model_pixel_size_nm: float, tolerance: float = PIXEL_SIZE_TOLERANCE, logger: logging.Logger | None = None
    ):
        self.expected = float(model_pixel_size_nm)
        self.tolerance = float(tolerance)
        self.mismatched = 0
        self._warned: dict[int, None] = {}
        self._log = logger or logging.getLogger("livedenoise.publish")

    def __call__(self, series_id: int, calibration) -> None:
        size = calibration.pixel_size_nm
        if not pixel_size_differs(self.expected, size, self.tolerance):
            return
        self.mismatched += 1
        if series_id in self._warned:
            return
        self._warned[series_id] = None
        if len(self._warned) > self.MAX_SERIES_WARNED:
            del self._warned[next(iter(self._warned))]
        self._log.warning(
            "series %d: pixel size %.4g nm, but the model was trained at %.4g nm (%+.0f %%): atoms have "
            "another size in pixels than it learnt; retrain on frames at this magnification, or check the scan",
            series_id, size, self.expected, 100 * (size / self.expected - 1),
        )

    def counters(self) -> dict[str, int]:
        return {"calibration_mismatch": self.mismatched}
