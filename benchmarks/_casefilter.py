"""The pieces of ``benchmarks/cases.py``'s truth-tuned causal filter, shared with
``benchmarks/realsamples.py``: PSNR after the affine fit from sums (:class:`Scorer`), the best
Gaussian over a grid, the filter's frame mean, and the content's drift measured back.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from livedenoise.analysis._filter import CausalFilter, gaussian_blur
from livedenoise.sim import measure_shift


class Scorer:
    """benchmarks/dense.py's PSNR (per frame after the affine fit to the truth, the range of the
    whole truth stack, mean over frames) from sums: the residual of the best affine fit of ``d`` to
    ``t`` is ``S_tt - S_dt^2 / S_dd`` (centred sums), no fitted image needed."""

    def __init__(self, truth: np.ndarray):
        t = np.asarray(truth, np.float64).reshape(len(truth), -1)
        self.range2 = float(t.max() - t.min()) ** 2
        self.tc = t - t.mean(axis=1, keepdims=True)
        self.stt = (self.tc * self.tc).sum(axis=1)
        self.n = t.shape[1]

    def frames(self, den: np.ndarray) -> np.ndarray:
        d = np.asarray(den, np.float64).reshape(len(den), -1)
        dc = d - d.mean(axis=1, keepdims=True)
        sdd = (dc * dc).sum(axis=1)
        sdt = (dc * self.tc).sum(axis=1)
        resid = self.stt - np.where(sdd > 0, sdt * sdt / np.where(sdd > 0, sdd, 1.0), 0.0)
        return 10.0 * np.log10(self.range2 / np.maximum(resid / self.n, 1e-300))

    def __call__(self, den: np.ndarray) -> float:
        return float(self.frames(den).mean())


SIGMAS = tuple(np.round(np.arange(0.0, 3.01, 0.25), 2))
DECAYS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def temporal_mean(movie: np.ndarray, held: slice, window: int, decay: float) -> np.ndarray:
    """The filter's weighted frame mean (no blur) at the held-out frames, with the frames before them as history."""
    lo = max(0, held.start - (window - 1))
    return CausalFilter(window, 0.0, decay).apply(movie[lo : held.stop])[held.start - lo :]


def best_sigma(mean: np.ndarray, score: Scorer, table: dict | None = None, key: tuple = ()) -> tuple[float, float]:
    """(PSNR, sigma) of the best Gaussian after ``mean``: the 0.25 px grid of 0-3 px, refined by 0.05 px."""
    coarse = {s: score(gaussian_blur(mean, s)) for s in SIGMAS}
    if table is not None:
        table.update({(*key, s): p for s, p in coarse.items()})
    s0 = max(coarse, key=coarse.get)
    fine = {s: score(gaussian_blur(mean, s)) for s in np.round(np.arange(s0 - 0.2, s0 + 0.21, 0.05), 2) if 0 <= s <= 3}
    best = max({**coarse, **fine}.items(), key=lambda kv: kv[1])
    return best[1], float(best[0])


def measure_drift(frames: np.ndarray, change: int | None = None, block: int = 1) -> dict:
    """The content's motion measured back by phase correlation (``measure_shift``): means of ``block``
    frames, each against the next, within the segments a scene change leaves. Steps more than 1 px
    from the median step are dropped (on a lattice: the peak of a neighbouring period, counted as
    ``aliased``); the mean of the rest per frame (the jitter cancels along a segment) as speed and
    direction of the content's drift."""
    cuts = [0, *([change] if change else []), len(frames)]
    steps = []
    for a, b in itertools.pairwise(cuts):
        n = (b - a) // block
        means = frames[a : a + n * block].reshape(n, block, *frames.shape[1:]).mean(axis=1)
        steps += [measure_shift(means[i], means[i + 1]) for i in range(n - 1)]
    v = np.asarray(steps, np.float64).reshape(-1, 2)
    ok = np.hypot(*(v - np.median(v, axis=0)).T) < 1.0 if len(v) else np.zeros(0, bool)
    mean = v[ok].mean(axis=0) / block if ok.any() else np.zeros(2)
    return {"speed": float(math.hypot(*mean)), "direction_deg": float(math.degrees(math.atan2(mean[1], mean[0]))),
            "pairs": len(v), "aliased": int((~ok).sum())}
