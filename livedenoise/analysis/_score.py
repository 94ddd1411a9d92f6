"""A score without ground truth: the error of a denoised frame, estimated from the frames after it.

The noise of frame ``t + 1`` is independent of everything a causal denoiser saw up to frame ``t``,
and its mean is the clean frame ``t + 1``, nearly frame ``t``'s at a detector's frame rate. So the
unsupervised mean squared error of uMSE (Marcos-Morales et al., ICML 2023, validated there on TEM
movies) applies frame by frame:

    uMSE_t = mean((a d_t + b - y_{t+1})^2) - 1/2 mean((y_{t+1} - y_{t+2})^2)

* ``d_t`` is the denoised frame ``t`` (any units: ``a`` and ``b`` are the least-squares affine
  fit of ``y_{t+1}`` on ``d_t``, which is an unbiased estimate of the fit to the clean frame, so
  the score is the error *after the affine fit*, as the ground-truth PSNR of docs/quality.md);
* the first term is that error plus the noise variance of frame ``t + 1`` (its noise is
  independent of ``d_t``); the second is the noise variance, estimated from two raw frames that
  ``d_t`` never saw. On a static scene both are exact in expectation, whatever the noise model
  (Poisson counts, analog gain and offset, read noise, per-line offsets: nothing is assumed).
* The raw frame scores the same way (``d_t = y_t``), so a method's **gain over raw** in dB compares
  with the ground-truth PSNR gain. Like mean PSNR, which weighs every frame alike in dB, it is the
  mean over blocks of :data:`BLOCK` consecutive scored frames of ``10 log10(uMSE_raw / uMSE)``
  (a block, not a frame: one frame's estimate is too noisy for a logarithm). A ratio of sums over
  the whole run would let the few frames after a scene change, where every method is far off,
  decide alone, and rank a blur that recovers fast above a filter that is better everywhere else.

Under drift, hops and scene changes the clean frame ``t + 1`` is not frame ``t``'s: the first term
grows by the change (more for a method that lags), the noise term by half the change of the next
pair. The benchmark reports that bias (docs/quality.md); between two methods scored on the same
frames the noise term cancels exactly (:func:`paired_gain`), which is what every choice uses.

numpy only, vectorised over frames: the daemon's guard scores live streams with it.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> clean = np.broadcast_to(rng.random((64, 64)) * 4, (12, 64, 64))
>>> noisy = rng.poisson(clean + 0.5).astype(np.float32)
>>> raw = frame_terms(noisy, noisy)
>>> mean3 = np.stack([noisy[max(0, t - 2): t + 1].mean(0) for t in range(12)])
>>> s = summarise(frame_terms(noisy, mean3), raw)
>>> 1.5 < s.gain_db < 2.5    # a third of the noise variance: about 2 dB after the affine fit
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: A method's uMSE is floored at this fraction of the noise variance before any ratio is taken:
#: an estimate can come out at or below zero for a near-perfect method on few frames.
UMSE_FLOOR = 1e-3
#: Consecutive scored frames per block: the unit of the score's average in dB and of the error of
#: a comparison (consecutive frames' errors are correlated; blocks are about independent).
BLOCK = 8


@dataclass(frozen=True, slots=True)
class FrameTerms:
    """Per scored frame ``t`` (arrays of one length): the fit residual against frame ``t + 1`` and
    the noise variance from frames ``t + 1`` and ``t + 2``. ``index`` are the frames scored."""

    index: np.ndarray
    residual: np.ndarray
    noise: np.ndarray

    @property
    def umse(self) -> np.ndarray:
        return self.residual - self.noise

    def __len__(self) -> int:
        return int(self.index.size)

    def take(self, keep: np.ndarray) -> FrameTerms:
        return FrameTerms(self.index[keep], self.residual[keep], self.noise[keep])


@dataclass(frozen=True, slots=True)
class Score:
    """A method's score on a set of frames: uMSE (raw units squared), the raw frames' uMSE on the
    same frames, the gain over raw in dB and the noise variance; ``frames`` scored."""

    umse: float
    umse_raw: float
    gain_db: float
    noise: float
    frames: int

    def to_dict(self) -> dict[str, float | int]:
        return {"gain_db": round(self.gain_db, 3), "umse": self.umse, "umse_raw": self.umse_raw,
                "noise": self.noise, "frames": self.frames}


def _fit_residual(d: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mean squared residual of the least-squares fit ``y ~ a d + b``, per row of ``(n, m)`` arrays
    (float64 moments: the variance of ``y`` less what ``d`` explains of it)."""
    m = d.shape[1]
    d = d.astype(np.float64, copy=False)
    y = y.astype(np.float64, copy=False)
    sd, sy = d.sum(1), y.sum(1)
    vd = np.einsum("ij,ij->i", d, d) / m - (sd / m) ** 2
    vy = np.einsum("ij,ij->i", y, y) / m - (sy / m) ** 2
    cov = np.einsum("ij,ij->i", d, y) / m - sd * sy / m**2
    explained = np.divide(cov * cov, vd, out=np.zeros_like(cov), where=vd > 1e-30 * np.maximum(vy, 1e-300))
    return np.maximum(vy - explained, 0.0)


def frame_terms(raw: np.ndarray, denoised: np.ndarray, index: np.ndarray | None = None) -> FrameTerms:
    """The score's two terms for frames ``index`` (default: every frame with two after it) of a
    run of consecutive raw ``(T, H, W)`` frames and their causal denoised ``(T, H, W)`` frames.

    ``denoised[t]`` must depend on raw frames up to ``t`` only; frames ``t + 1`` and ``t + 2`` must
    be the next two of the same run (no frame dropped in between).
    """
    raw = np.asarray(raw)
    denoised = np.asarray(denoised)
    if raw.ndim != 3 or denoised.shape != raw.shape:
        raise ValueError(f"score needs raw and denoised (T, H, W) of one shape, got {raw.shape} and {denoised.shape}")
    t_max = raw.shape[0] - 2
    idx = np.arange(max(t_max, 0)) if index is None else np.asarray(index, np.intp)
    if idx.size and (idx.min() < 0 or idx.max() >= t_max):
        raise ValueError(f"frames scored need two frames after them: {raw.shape[0]} frames, index up to {idx.max()}")
    n, m = idx.size, raw.shape[1] * raw.shape[2]
    d = denoised[idx].reshape(n, m)
    y1 = raw[idx + 1].reshape(n, m)
    y2 = raw[idx + 2].reshape(n, m)
    diff = y1.astype(np.float64) - y2
    noise = 0.5 * np.einsum("ij,ij->i", diff, diff) / max(m, 1)
    return FrameTerms(idx, _fit_residual(d, y1), noise)


def _block_gains(umse_ref: np.ndarray, umse: np.ndarray, floor: float, block: int) -> np.ndarray:
    """``10 log10(uMSE_ref / uMSE)`` of each block of ``block`` consecutive values (the last one may
    be shorter), both floored."""
    n = umse.size
    edges = np.arange(0, n, block)
    ref = np.add.reduceat(umse_ref, edges) / np.diff(np.append(edges, n))
    own = np.add.reduceat(umse, edges) / np.diff(np.append(edges, n))
    return 10.0 * np.log10(np.maximum(ref, floor) / np.maximum(own, floor))


def summarise(terms: FrameTerms, raw_terms: FrameTerms, block: int = BLOCK) -> Score:
    """A method's :class:`Score` on its frames, against the raw frames' terms on the same frames."""
    if len(terms) == 0:
        return Score(math.nan, math.nan, math.nan, math.nan, 0)
    common, _, b = np.intersect1d(terms.index, raw_terms.index, return_indices=True)
    if common.size != len(terms):
        raise ValueError("the raw frames' terms must cover every frame the method was scored on")
    noise = float(terms.noise.mean())
    raw = raw_terms.take(b)
    gain = float(_block_gains(raw.umse, terms.umse, UMSE_FLOOR * noise, block).mean()) if noise > 0 else math.nan
    return Score(float(terms.umse.mean()), float(raw.umse.mean()), gain, noise, len(terms))


def score(raw: np.ndarray, denoised: np.ndarray, index: np.ndarray | None = None) -> Score:
    """The :class:`Score` of ``denoised`` (causal) on the raw movie ``raw``: see the module text."""
    return summarise(frame_terms(raw, denoised, index), frame_terms(raw, raw, index))


def paired_gain(a: FrameTerms, b: FrameTerms, block: int = BLOCK) -> tuple[float, float]:
    """How much better method ``a`` is than method ``b`` on the same frames, in dB: the mean over
    blocks of ``10 log10(uMSE_b / uMSE_a)``, and its standard error across the blocks (``inf``
    with fewer than 3). The noise term is common to both methods and cancels from each block's
    difference."""
    if not np.array_equal(a.index, b.index):
        raise ValueError("paired_gain needs both methods scored on the same frames")
    if len(a) == 0:
        return math.nan, math.inf
    gains = _block_gains(b.umse, a.umse, UMSE_FLOOR * max(float(a.noise.mean()), 1e-300), block)
    se = float(gains.std(ddof=1) / math.sqrt(gains.size)) if gains.size >= 3 else math.inf
    return float(gains.mean()), se
