"""``serve``'s guard (issues 19 and 24): does the model fit the stream, measured, and why might it
not? How much of each raw frame does the denoised one leave unexplained? In a thread of its own.

A model trained on sparse atoms and pointed at a lattice shows clean, convincing, wrong images.
The figures that say so while the operator looks:

* the **verdict**, measured (issue 24): a sample of the frames (``score_rate`` a second) is scored
  without ground truth (:class:`~livedenoise.analysis.MeasuredFit`: each frame's error estimated
  from the two raw frames after it), the model's output and a bank of classical causal filters'
  on the same frames; the model *fits* where it beats the best filter, *does not fit* where the
  filter beats it, with hysteresis and *undecided* while the evidence is thin (at most 30 s).
  The model's score, as a gain over raw in dB, goes out in ``stats`` beside CSS (``score_db``);
* **why**: about once a second, :func:`~livedenoise.analysis.estimate_content` on the last
  ``window`` raw frames of the stream (tens of ms at 128²), compared with the model card's
  ``expects`` (the training movie's figures) by :func:`~livedenoise.analysis.compare_content`:
  the figures go out, and their sentence joins the message of a model that does not fit;
* the **unexplained** signal of each frame (:func:`~livedenoise.analysis.unexplained`, about a
  millisecond at 128²): raw counts the denoised frame, mapped back to counts, leaves unexplained
  beyond the noise, summed where they cluster. It rises when atoms are erased. At a low dose one
  frame holds too few counts to tell an erased column from noise, so the same figure is also
  computed, once a second, on the sum of the window's raw frames against the sum of their
  denoised ones (:func:`~livedenoise.analysis.unexplained_sum`: per frame, N times the signal for
  sqrt(N) the noise; a shipped model on a simulated MoS2 lattice at 5 counts a column: ~0 in
  single frames, 42 % of the atomic counts over 16).

Both go out in ``stats`` (see docs/protocol.md), and a verdict that does not fit is logged as a
WARNING (again at most once a minute while it lasts). Why ``stats`` and not the ``atoms``
message for the per-frame figure: the guard is on whether or not atoms are found (``--atoms`` is
off by default), it costs the atom thread nothing, and at high frame rates it is computed for a
sample of the frames (``unexplained_rate`` a second), which a per-frame message would misstate.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections import deque
from dataclasses import replace
from typing import Any, NamedTuple

import numpy as np

from .._stage import SideStage, Spawn, spawn_thread
from ..analysis import (
    ATOM_SIGMA,
    DOES_NOT_FIT,
    FITS,
    FitSummary,
    GuardReport,
    MeasuredFit,
    atom_width,
    expected_content,
    guard_report,
    read_noise_of,
    unexplained,
    unexplained_sum,
)
from ..engine import pixel_size_differs
from ._config import GuardConfig
from ._publish import Delivered

log = logging.getLogger("livedenoise.guard")

WARN_EVERY_S = 60.0  # a verdict that does not fit is logged again this often while it lasts
RECENT = 64  # frames in the unexplained running mean


__all__ = ["StreamGuard"]

SCORE_SHARE = 0.15  # of a core, at most, for the measured fit (it waits longer after a slow frame)


class _Pair(NamedTuple):
    raw: np.ndarray
    denoised: np.ndarray
    image_id: int = 0


class StreamGuard(SideStage[_Pair]):
    """The guard's thread: the measured verdict, content estimates and the unexplained figure, off
    the hot path (a side stage: :class:`~livedenoise._stage.SideStage`).

    :meth:`submit` is a publisher hook (O(1), a lock and two appends): it keeps references to
    the last ``window`` raw and denoised frames of the current run (series, epoch and frame size;
    a new run starts a new window) and, at most ``unexplained_rate`` times a second, a (raw, denoised)
    pair for the unexplained figure; pairs the thread has not taken when new ones come are
    skipped and counted (``unexplained_skipped``). The thread runs at a lower OS priority on
    Linux, scores a frame at most ``score_rate`` times a second, and spaces its estimates by
    ``interval`` seconds, or twice the last estimate's time if longer (large frames), so it takes a
    third of a core at most (``config``: :class:`~livedenoise.daemon.GuardConfig`). A failure is
    counted and logged, never raised. :meth:`close` leaves out the pairs still waiting.

    Parameters
    ----------
    expects:
        The model card's ``expects`` (None: no content figures, one log line; the measured verdict
        and the unexplained figures are still computed).
    """

    stage = "guard"
    nice = 10  # inference goes first
    drain = False

    def __init__(
        self,
        expects: dict[str, Any] | None,
        config: GuardConfig,
        *,
        trained_shape: tuple[int, int] | None = None,
        trained_pixel_nm: float | None = None,
        window_bytes: int = 256 << 20,
        logger: logging.Logger | None = None,
    ):
        super().__init__(capacity=2, when_full="skip", logger=logger or log)
        self.expects = expects
        self.expected, self.off_reason = expected_content(expects)
        # the last report with a content verdict (before one: the card's figures alone); read with the fit of now
        self.report = GuardReport(None, None, None, self.expected, self.off_reason)
        self.trained_shape, self.trained_pixel_nm = trained_shape, trained_pixel_nm
        self.fit = MeasuredFit()
        self.window = max(int(config.window), self.fit.depth + 3)  # the measured fit needs its filters' history
        self.interval = float(config.interval)
        self.score_rate = float(config.score_rate)
        self._next_score = 0.0
        self._next_estimate = math.inf  # set as the thread starts
        self._last_scored: int | None = None  # image id of the last frame scored
        self.scored = 0
        self.score_ms: float | None = None
        self.unexplained_rate = float(config.unexplained_rate)
        self.window_bytes = window_bytes
        self._frames: deque[_Pair] = deque()  # the window: the current run's last frames
        self._frame_bytes = 0
        self._run: tuple[int, int, tuple[int, ...]] | None = None
        self._pixel_size: float | None = None
        self._next_pair = 0.0
        self._next_warn = 0.0
        self._new_run = False
        self.estimates = 0
        self.estimate_ms: float | None = None
        self.unexplained_frames = 0
        self._unexplained: deque[tuple[float, float]] = deque(maxlen=RECENT)  # (counts, fraction)
        self.last_unexplained: float | None = None
        self.read_noise: float | None = None  # of the stream (consecutive raw frames), for the figures
        self.window_figure = None  # unexplained_sum over the last window

    # ------------------------------------------------------------------ publisher thread

    def submit(self, delivered: Delivered) -> None:
        """Publisher hook: keep the raw frame for the window; now and then a pair for the figure."""
        raw = delivered.raw
        run = (delivered.series_id, delivered.epoch, raw.shape)
        now = time.monotonic()
        pair = _Pair(raw, delivered.denoised, delivered.image_id)
        with self._cv:
            if run != self._run:
                self._frames.clear()
                self._frame_bytes = 0
                self._run = run
                self._new_run = True
            self._frames.append(pair)
            self._frame_bytes += raw.nbytes + pair.denoised.nbytes
            while len(self._frames) > self.window or (self._frame_bytes > self.window_bytes and len(self._frames) > 1):
                old = self._frames.popleft()
                self._frame_bytes -= old.raw.nbytes + old.denoised.nbytes
            if delivered.calibration is not None and delivered.calibration.pixel_size_nm:
                self._pixel_size = delivered.calibration.pixel_size_nm
            if self.unexplained_rate > 0 and now >= self._next_pair and raw.shape == delivered.denoised.shape:
                self._next_pair = now + 1.0 / self.unexplained_rate
                self._put(pair)  # the oldest waiting pair is skipped

    # ------------------------------------------------------------------ lifetime

    def start(self, spawn: Spawn = spawn_thread) -> None:
        if self.expected is None:
            self.log.info("guard: %s; the measured fit is on", self.off_reason)
        else:
            self.log.info("guard: the model expects %s", self.expected.describe())
        super().start(spawn)

    def counters(self) -> dict[str, Any]:
        """``stats`` fields: the verdict and its figures, the score, the unexplained signal (see docs/protocol.md)."""
        report = replace(self.report, fit=self.fit.summary())
        out = report.to_dict() | {"guard_message": self._message(report)}
        out |= {"guard_estimates": self.estimates, "guard_failed": self.failed, "guard_ms": self.estimate_ms,
                "score_ms": self.score_ms, "scored": self.scored}
        recent = np.array(self._unexplained, np.float64).reshape(-1, 2)
        window = self.window_figure
        return out | {
            "unexplained_window": None if window is None else round(window.counts, 3),
            "unexplained_window_fraction": None if window is None else round(window.fraction, 4),
            "unexplained_last": self.last_unexplained,
            "unexplained_mean": round(float(recent[:, 0].mean()), 3) if recent.size else None,
            "unexplained_fraction": round(float(recent[:, 1].mean()), 4) if recent.size else None,
            "unexplained_frames": self.unexplained_frames,
            "unexplained_skipped": self.skipped,
        }

    # ------------------------------------------------------------------ guard thread

    def _message(self, report: GuardReport) -> str:
        """The verdict's sentence (:attr:`GuardReport.message`), and a frame or pixel size the model
        was not trained on."""
        text = report.message
        shape = self._run[2] if self._run is not None else None
        if self.trained_shape and shape and tuple(shape) != tuple(self.trained_shape):
            text += f"; frames {shape[0]}x{shape[1]}, the model was trained on {self.trained_shape[0]}x{self.trained_shape[1]}"
        if pixel_size_differs(self.trained_pixel_nm, self._pixel_size):
            text += f"; pixels of {self._pixel_size:.4g} nm, the model was trained on {self.trained_pixel_nm:.4g} nm"
        return text

    def _begin(self) -> None:
        self._next_estimate = time.monotonic() + self.interval

    def _wait_s(self) -> float:
        """Until the next score or estimate is due."""
        return min(self._next_estimate, self._score_time()) - time.monotonic()

    def _handle(self, pair: _Pair) -> None:
        self._unexplained_of(pair)

    def _tick(self) -> None:
        with self._cv:
            job = self._score_job() if self._score_due() else None
        if job is not None:
            self._score(*job)
        if time.monotonic() >= self._next_estimate:
            took = self._estimate()
            self._next_estimate = time.monotonic() + max(self.interval, 2.0 * took)

    # ------------------------------------------------------------------ measured fit (issue 24)

    def _score_time(self) -> float:
        """When the next score is due; never (inf) while none can be (``score_rate`` 0, fewer than 3
        frames): a past time there would make the guard's wait a busy loop on a core and the GIL."""
        return self._next_score if self.score_rate > 0 and len(self._frames) >= 3 else math.inf

    def _score_due(self) -> bool:
        return time.monotonic() >= self._score_time()

    def _score_job(self) -> tuple[list[_Pair] | None, bool]:
        """Under the lock: whether a new run began, and the frames to score the newest frame ``t``
        that has two after it: ``t``'s filters' history (consecutive ids: no frame dropped), ``t``
        and the two after it; None where there is no such frame not scored yet."""
        self._next_score = time.monotonic() + 1.0 / self.score_rate
        new_run, self._new_run = self._new_run, False
        frames = list(self._frames)
        t = len(frames) - 3
        start = t - self.fit.depth + 1
        if start < 0 or (not new_run and self._last_scored is not None and frames[t].image_id <= self._last_scored):
            return None, new_run
        ids = [p.image_id for p in frames[start:]]
        if any(b - a != 1 for a, b in itertools.pairwise(ids)):
            return None, new_run
        return frames[start:], new_run

    def _score(self, frames: list[_Pair] | None, new_run: bool) -> None:
        if new_run:
            self.fit.reset()
            self._last_scored = None
        if frames is None:
            return
        t0 = time.perf_counter()
        before = self.fit.state
        try:
            summary = self.fit.add(np.stack([p.raw for p in frames]), frames[-3].denoised, time.monotonic())
        except Exception as exc:  # noqa: BLE001 - frames the score cannot take: count, go on
            self._failed("measured fit failed on a %s frame: %r", frames[-1].raw.shape, exc)
            summary = None
        took = time.perf_counter() - t0
        self._last_scored = frames[-3].image_id
        self.scored += 1
        self.score_ms = round(took * 1e3, 2)
        self._next_score = max(self._next_score, time.monotonic() + took / SCORE_SHARE)
        if summary is not None:
            self._report_fit(before, summary)

    def _unexplained_of(self, pair: _Pair) -> None:
        try:
            u = unexplained(
                pair.raw, pair.denoised, atom_width(self.expected, self.report.seen, default=ATOM_SIGMA),
                read_noise=self.read_noise,
            )
        except Exception as exc:  # noqa: BLE001 - a frame the figure cannot take: count, go on
            self._failed("unexplained signal failed on a %s frame: %r", pair.raw.shape, exc)
            return
        self.last_unexplained = round(u.counts, 3)
        self._unexplained.append((u.counts, u.fraction))
        self.unexplained_frames += 1

    def _estimate(self) -> float:
        """The window's figures: read noise, unexplained signal of its sum, and (with the card's
        figures) the guard's report on it (:func:`~livedenoise.analysis.guard_report`, with the fit
        measured so far). Returns the seconds it took."""
        with self._cv:
            pairs = list(self._frames)
            pixel_size = self._pixel_size
        if not pairs:
            return 0.0
        t0 = time.perf_counter()
        try:
            raws = np.stack([p.raw for p in pairs])
            self.read_noise = read_noise_of(raws)
            report = guard_report(
                self.expects, raws, pixel_size_nm=pixel_size, fit=self.fit.summary(), window=len(pairs)
            )
            sigma = atom_width(report.expected, report.seen, self.report.seen, default=ATOM_SIGMA)
            self.window_figure = unexplained_sum(
                raws, np.stack([p.denoised for p in pairs]), sigma, read_noise=self.read_noise
            )
        except Exception as exc:  # noqa: BLE001 - frames the estimate cannot take: count, go on
            self._failed("guard estimate failed on %d frames of %s: %r", len(pairs), pairs[0].raw.shape, exc)
            return time.perf_counter() - t0
        took = time.perf_counter() - t0
        self.estimate_ms = round(took * 1e3, 2)
        self.estimates += 1
        if report.content is not None:
            self.report = report
        return took

    def _report_fit(self, before: str, summary: FitSummary) -> None:
        """Log a model that does not fit (at once when it turns, then once a minute), and the return to fitting."""
        now = time.monotonic()
        message = self._message(replace(self.report, fit=summary))
        if summary.state == DOES_NOT_FIT:
            if before != DOES_NOT_FIT or now >= self._next_warn:
                self.log.warning("guard: %s", message)
                self._next_warn = now + WARN_EVERY_S
        elif summary.state == FITS and before != FITS:
            self.log.info("guard: %s", message)
