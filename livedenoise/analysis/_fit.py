"""Does the model fit the stream? Measured: the model against the classical causal filter, scored
without ground truth on the same frames (issue 24).

A content estimate (:func:`~livedenoise.analysis.compare_content`) says *why* a model may not fit
(a lattice where it learnt sparse atoms), but it fired on streams where the model was the best
method there was. What decides now is what the operator cares about: is the denoised frame closer
to the truth than what a causal mean and a blur would give? Both are scored by
:func:`~livedenoise.analysis.frame_terms` (the error against the next raw frame; the noise term
is common to both and cancels in :func:`~livedenoise.analysis.paired_gain`). The filter is the
best of a small bank (:data:`FILTER_BANK`) on the frames in the evidence window, so a model that
merely matches a well-chosen blur does not pass for a good one.

The rules, fixed before any evaluation case was looked at (:class:`FitRules`): the model's
advantage over the filter ``G`` in dB and its standard error ``se`` (a jackknife over blocks of
consecutive frames) decide, with hysteresis and an "undecided" state while the evidence is thin:

* **undecided** until ``min_blocks`` blocks are scored, and while the interval ``G +- z se``
  straddles ``-margin``;
* **does not fit** when ``G + z se < -margin`` (confidently worse than the filter by more than the
  margin); from "fits", only when ``G + z se < -margin - hysteresis``;
* **fits** when ``G - z se > -margin``; from "does not fit", only when ``G - z se > -margin + hysteresis``;
* ``decide_after_s`` seconds into a run, an undecided verdict takes the side of ``G`` itself.

numpy only: the daemon's guard thread runs it.

>>> rules = FitRules()
>>> step(UNDECIDED, -1.5, 0.2, 10, 0.0, rules), step(UNDECIDED, 0.8, 0.2, 10, 0.0, rules)
('does not fit', 'fits')
>>> step(UNDECIDED, -0.3, 0.4, 10, 0.0, rules), step(UNDECIDED, -0.3, 0.4, 10, 31.0, rules)
('undecided', 'does not fit')
>>> step(FITS, -0.6, 0.05, 10, 0.0, rules)    # inside the hysteresis band: stays
'fits'
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from ._filter import CausalFilter, gaussian_blur
from ._score import FrameTerms, _fit_residual, frame_terms, paired_gain, summarise

FITS, DOES_NOT_FIT, UNDECIDED = "fits", "does not fit", "undecided"

#: The filters a model is measured against live: windows of 1-16 frames and an exponential one,
#: each with a light, a medium and a wide Gaussian (17 filters; 5 ms a frame at 128² here).
FILTER_BANK: tuple[CausalFilter, ...] = (
    *(CausalFilter(w, s) for w in (1, 2, 4, 8, 16) for s in (0.5, 1.0, 2.0)),
    CausalFilter(16, 1.0, 0.85),
    CausalFilter(16, 2.0, 0.85),
)


@dataclass(frozen=True, slots=True)
class FitRules:
    """The thresholds of the module text (dB, frames, seconds)."""

    margin_db: float = 0.25
    hysteresis_db: float = 0.25
    z: float = 2.0
    block: int = 8
    min_blocks: int = 4
    decide_after_s: float = 30.0
    window: int = 400  # scored frames kept as evidence (the most recent)


def step(state: str, gain: float, se: float, blocks: int, elapsed_s: float, rules: FitRules) -> str:
    """The next verdict from the current one and the evidence (module text)."""
    if not math.isfinite(gain):
        return state
    lo, hi = gain - rules.z * se, gain + rules.z * se
    if blocks >= rules.min_blocks:
        worse_by = rules.margin_db + (rules.hysteresis_db if state == FITS else 0.0)
        better_by = -rules.margin_db + (rules.hysteresis_db if state == DOES_NOT_FIT else 0.0)
        if hi < -worse_by:
            return DOES_NOT_FIT
        if lo > better_by:
            return FITS
    if state == UNDECIDED and elapsed_s >= rules.decide_after_s:
        return FITS if gain >= -rules.margin_db else DOES_NOT_FIT
    return state


@dataclass(frozen=True, slots=True)
class FitSummary:
    """The evidence so far: the verdict, the model's and the best filter's gain over raw (dB),
    the model's advantage over that filter with its standard error, and the frames scored."""

    state: str
    model_db: float | None
    filter_db: float | None
    filter: str | None
    advantage_db: float | None
    se_db: float | None
    frames: int

    @property
    def message(self) -> str:
        if self.advantage_db is None:
            return "no frames scored yet"
        if self.state == DOES_NOT_FIT:
            return (f"a causal filter ({self.filter}) beats this model by {-self.advantage_db:.1f} dB on this stream "
                    f"(ground-truth-free score, {self.frames} frames)")
        if self.state == FITS:
            return (f"this model beats the best causal filter ({self.filter}) by {self.advantage_db:+.1f} dB on this "
                    f"stream (ground-truth-free score, {self.frames} frames)")
        return f"undecided: the model against the best causal filter {self.advantage_db:+.1f} ± {self.se_db:.1f} dB over {self.frames} frames"

    def to_dict(self) -> dict[str, float | int | str | None]:
        def r(v: float | None) -> float | None:
            return None if v is None or not math.isfinite(v) else round(v, 3)

        return {"score_db": r(self.model_db), "score_filter_db": r(self.filter_db), "score_filter": self.filter,
                "score_advantage_db": r(self.advantage_db), "score_se_db": r(self.se_db), "score_frames": self.frames,
                "fit": self.state}


def measure_fit(raw: np.ndarray, denoised: np.ndarray, rules: FitRules | None = None,
                bank: tuple[CausalFilter, ...] = FILTER_BANK) -> FitSummary:
    """The verdict on a whole recorded run, offline (``denoise``): the model against the best filter
    of ``bank`` on every frame with two after it; ``undecided`` where the interval straddles the margin."""
    rules = rules or FitRules()
    raw = np.asarray(raw, np.float32)
    if raw.shape[0] < 3:
        return FitSummary(UNDECIDED, None, None, None, None, None, 0)
    filters = [frame_terms(raw, f.apply(raw)) for f in bank]
    return _compare(UNDECIDED, frame_terms(raw, np.asarray(denoised, np.float32)), frame_terms(raw, raw), filters,
                    bank, 0.0, rules)


def _compare(state: str, model: FrameTerms, raw: FrameTerms, filters: list[FrameTerms],
             bank: tuple[CausalFilter, ...], elapsed: float, rules: FitRules) -> FitSummary:
    """The model against the best of the bank's filters (by their gain over raw) on the same frames:
    the paired advantage, and the next state from ``state`` by :func:`step`."""
    scores = [summarise(f, raw, rules.block) for f in filters]
    best = int(np.argmax([sc.gain_db for sc in scores]))
    advantage, se = paired_gain(model, filters[best], rules.block)
    new = step(state, advantage, se, len(model) // rules.block, elapsed, rules)
    return FitSummary(new, summarise(model, raw, rules.block).gain_db, scores[best].gain_db, bank[best].describe(),
                      advantage, se, len(model))


class MeasuredFit:
    """The running comparison of one stream run (series, shape): :meth:`add` one frame's evidence,
    read :meth:`summary`; :meth:`reset` at a new run."""

    def __init__(self, rules: FitRules | None = None, bank: tuple[CausalFilter, ...] = FILTER_BANK):
        self.rules = rules or FitRules()
        self.bank = bank
        self.depth = max(f.window for f in bank)  # raw frames before t each scored frame needs
        self.state = UNDECIDED
        self._started: float | None = None
        self._model: deque[tuple[int, float, float]] = deque(maxlen=self.rules.window)  # (index, residual, noise)
        self._raw: deque[float] = deque(maxlen=self.rules.window)
        self._filters: deque[np.ndarray] = deque(maxlen=self.rules.window)
        self._count = 0
        self._summary = FitSummary(UNDECIDED, None, None, None, None, None, 0)

    def reset(self) -> None:
        self.__init__(self.rules, self.bank)

    def add(self, raw: np.ndarray, denoised: np.ndarray, now: float) -> FitSummary:
        """One scored frame ``t``: ``raw`` holds up to :attr:`depth` frames up to ``t`` and then frames
        ``t + 1`` and ``t + 2`` (``(n, H, W)``, consecutive, one run); ``denoised`` is the model's frame ``t``."""
        raw = np.asarray(raw, np.float32)
        if raw.ndim != 3 or raw.shape[0] < 3 or denoised.shape != raw.shape[1:]:
            raise ValueError(f"measured fit needs (n >= 3, H, W) raw frames and an (H, W) denoised one, got {raw.shape} and {denoised.shape}")
        if self._started is None:
            self._started = now
        history, after = raw[:-2], raw[-2:]
        outputs = np.stack([denoised.astype(np.float32), history[-1], *self._filtered(history)])
        n = outputs.shape[0]
        res = _fit_residual(outputs.reshape(n, -1), np.broadcast_to(after[0].reshape(1, -1), (n, after[0].size)))
        diff = after[0].astype(np.float64) - after[1]
        noise = 0.5 * float(np.vdot(diff, diff)) / diff.size
        self._model.append((self._count, res[0], noise))
        self._raw.append(res[1])
        self._filters.append(res[2:])
        self._count += 1
        return self._update(now)

    def _filtered(self, history: np.ndarray) -> list[np.ndarray]:
        """Every filter of the bank at the last frame of ``history``: the window means from one
        running sum, each blurred once per sigma."""
        h = history[np.clip(np.arange(history.shape[0] - self.depth, history.shape[0]), 0, None)]
        sums = {0: np.zeros(h.shape[1:], np.float32)}
        total = sums[0]
        for w in range(1, self.depth + 1):  # the sum of the last w frames, for the windows in the bank
            total = total + h[-w]
            sums[w] = total
        out = []
        for f in self.bank:
            mean = sums[f.window] / f.window if f.decay == 0 else np.tensordot(f.weights().astype(np.float32), h[-f.window:], axes=1)
            out.append(gaussian_blur(mean, f.sigma))
        return out

    def _update(self, now: float) -> FitSummary:
        idx, res, noise = (np.array(v) for v in zip(*self._model))
        idx = idx.astype(np.intp)
        filters = np.array(self._filters)  # (frames, bank)
        self._summary = _compare(self.state, FrameTerms(idx, res, noise), FrameTerms(idx, np.array(self._raw), noise),
                                 [FrameTerms(idx, filters[:, i], noise) for i in range(filters.shape[1])],
                                 self.bank, now - (self._started or now), self.rules)
        self.state = self._summary.state
        return self._summary

    def summary(self) -> FitSummary:
        return self._summary
