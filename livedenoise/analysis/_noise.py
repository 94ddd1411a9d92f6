"""What a raw movie's noise and motion are, from the movie alone, before anything assumes counts.

HAADF from Nion, Thermo or Gatan scan units is analog: an offset, an unknown gain, read noise and
an offset per scan line. Counting detectors give Poisson counts. Both follow a variance that is
linear in the mean, ``var = gain * (mean - offset)``, plus read and line noise; consecutive frames
of one scene differ by noise alone (and a little motion), so their difference measures it
without any clean image:

* **gain and offset** (:func:`noise_model`): pixel pairs ``(y_t, y_{t+1})`` binned by their own
  mean; half the mean squared difference in each bin, less the line noise, against the bin's
  mean, fitted by a line. Pixels where the scene moves most (the top fifth of the mean's local
  gradient) are left out, so drift does not pass for noise.
* **line noise**: the variance of each line's mean difference beyond what the pixels' own noise
  explains.
* **shared noise** (frames a vendor already averaged): for independent noise the differences of
  consecutive pairs correlate at -1/2 (frame ``t + 1`` is in both with opposite signs); a running
  average of two frames brings it to 0. Measured on the flattest fifth of the scene, where motion
  changes little.
* **drift** (:func:`drift_per_frame`): the phase correlation of the means of the movie's first and
  last quarters, divided by the frames between them.
* **scene changes** (:func:`scene_changes`): frames where the mean of the frames after differs
  from the mean of the frames before far more than anywhere else in the movie.

numpy only (the daemon's guard may call it); tens of milliseconds for 64 frames of 128².
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

#: Correlation of consecutive frame differences above which noise is taken as shared between
#: frames (independent noise: -0.5; a running mean of two frames: 0).
SHARED_NOISE_CORR = -0.35


@dataclass(frozen=True, slots=True)
class NoiseModel:
    """The movie's noise, in its own units. ``gain``: variance per unit of mean (1 for counts);
    ``offset``: the mean at which the pixel variance would vanish (the dark level, less what read
    noise adds: the two cannot be told apart without a dark frame); ``line``: the variance of a
    scan line's common offset;
    ``diff_corr``: the correlation of consecutive frame differences (-0.5: independent noise);
    ``reliable``: enough frames and signal for the fit, with ``note`` saying why not."""

    gain: float
    offset: float
    line: float
    diff_corr: float
    frames: int
    reliable: bool = True
    note: str = ""

    @property
    def shared(self) -> bool:
        """Noise shared between consecutive frames (averaged or smoothed in time by the vendor)."""
        return self.reliable and self.diff_corr > SHARED_NOISE_CORR

    def variance(self, mean: np.ndarray | float) -> np.ndarray | float:
        """Per-pixel noise variance at a given mean (line noise included)."""
        return np.maximum(self.gain * (np.asarray(mean) - self.offset), 0.0) + self.line

    def describe(self) -> str:
        if not self.reliable:
            return f"noise model unknown ({self.note})"
        kind = "counts" if abs(self.gain - 1) < 0.15 and abs(self.offset) < 0.6 else "analog"
        text = f"{kind}: gain {self.gain:.3g} per unit, offset {self.offset:.3g}, line noise {math.sqrt(self.line):.3g}"
        if self.shared:
            text += f"; noise shared between frames (difference correlation {self.diff_corr:+.2f}, -0.5 if independent)"
        return text

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _box3(img: np.ndarray) -> np.ndarray:
    """3 x 3 mean over the last two axes, edges repeated."""
    p = np.pad(img, [(0, 0)] * (img.ndim - 2) + [(1, 1), (1, 1)], mode="edge")
    rows = p[..., :-2, :] + p[..., 1:-1, :] + p[..., 2:, :]
    return (rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]) / 9.0


def noise_model(frames: np.ndarray, max_pairs: int = 32) -> NoiseModel:
    """The :class:`NoiseModel` of a ``(T, H, W)`` movie from up to ``max_pairs`` consecutive pairs."""
    y = np.asarray(frames, np.float64)
    if y.ndim != 3 or y.shape[0] < 3:
        return NoiseModel(1.0, 0.0, 0.0, math.nan, int(y.shape[0]) if y.ndim == 3 else 1, False,
                          "fewer than 3 frames: no frame differences")
    t = min(y.shape[0] - 1, max_pairs)
    a, b = y[:t], y[1 : t + 1]
    d = a - b
    w = d.shape[2]
    # line noise: the variance of a line's mean difference beyond the pixels' share of it
    row_means = d.mean(axis=2)
    pix = 0.5 * float(np.mean(d * d))
    line = max(0.0, 0.5 * float(row_means.var()) - pix / w) if w > 1 else 0.0
    local = 0.5 * (a + b)  # the pair's own mean: given it, half the squared difference is the
    # pair's variance without the dilution a smoothed mean would bring (Poisson: exactly)
    static = _box3(y[: t + 1].mean(0))
    gy, gx = np.gradient(static)
    grad = np.hypot(gy, gx)
    keep = grad <= np.quantile(grad, 0.8)
    m = local[:, keep].ravel()
    v = 0.5 * (d[:, keep] ** 2).ravel() - line
    edges = np.unique(np.quantile(m, np.linspace(0, 1, 21)))
    if edges.size < 4 or float(np.ptp(y)) == 0.0:
        return NoiseModel(1.0, 0.0, line, math.nan, y.shape[0], False, "constant frames: no variance to fit")
    which = np.clip(np.searchsorted(edges, m, side="right") - 1, 0, edges.size - 2)
    count = np.bincount(which, minlength=edges.size - 1).astype(np.float64)
    ok = count > 0
    bm = np.bincount(which, m, minlength=edges.size - 1)[ok] / count[ok]
    bv = np.bincount(which, v, minlength=edges.size - 1)[ok] / count[ok]
    slope, intercept = np.polyfit(bm, bv, 1, w=np.sqrt(count[ok]))
    # differences of consecutive pairs, (y1 - y0) and (y2 - y1), on the flattest fifth
    flat = grad <= np.quantile(grad, 0.2)
    d1, d2 = d[:-1][:, flat].ravel(), d[1:][:, flat].ravel()
    corr = float(np.corrcoef(d1, d2)[0, 1]) if d1.size > 10 and d1.std() > 0 and d2.std() > 0 else math.nan
    gain = float(slope)
    if not (gain > 0 and math.isfinite(gain)):
        return NoiseModel(1.0, 0.0, line, corr, y.shape[0], False,
                          "the variance does not grow with the signal (no shot noise to fit)")
    return NoiseModel(gain, -float(intercept) / gain, line, corr, y.shape[0])


def _phase_shift(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Shift ``(dy, dx)`` of ``b`` relative to ``a`` by phase correlation, sub-pixel by a parabola."""
    win = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))
    fa = np.fft.fft2((a - a.mean()) * win)
    fb = np.fft.fft2((b - b.mean()) * win)
    cross = fb * np.conj(fa)
    corr = np.fft.ifft2(cross / np.maximum(np.abs(cross), 1e-12)).real
    iy, ix = np.unravel_index(int(np.argmax(corr)), corr.shape)
    out = []
    for axis, i in ((0, iy), (1, ix)):
        n = corr.shape[axis]
        c = [corr[(i + k) % n, ix] if axis == 0 else corr[iy, (i + k) % n] for k in (-1, 0, 1)]
        den = c[0] - 2 * c[1] + c[2]
        frac = 0.5 * (c[0] - c[2]) / den if den < 0 else 0.0
        pos = i + frac
        out.append(pos - n if pos > n / 2 else pos)
    return out[0], out[1]


def drift_per_frame(frames: np.ndarray) -> float:
    """Drift in pixels per frame: the phase correlation of the means of the first and last
    quarters of the movie (at least 2 frames each), over the frames between their centres."""
    y = np.asarray(frames, np.float64)
    n = y.shape[0]
    if n < 4:
        return 0.0
    q = max(2, n // 4)
    dy, dx = _phase_shift(y[:q].mean(0), y[-q:].mean(0))
    return math.hypot(dy, dx) / (n - q)


def scene_changes(frames: np.ndarray, factor: float = 4.0, span: int = 4) -> list[int]:
    """Frames ``t`` where the scene changed since frame ``t - 1``: the mean squared difference of
    the means of the ``span`` frames after and before ``t`` (each smoothed by a 1.5 px Gaussian, so
    that noise averages out and a single frame's noise cannot pass for a change) stands ``factor``
    times above the movie's median one and highest within ``span`` frames."""
    from ._filter import gaussian_blur

    y = np.asarray(frames, np.float32)
    t = y.shape[0]
    k = min(span, t // 4)
    if k < 1:
        return []
    s = gaussian_blur(y, 1.5).reshape(t, -1).astype(np.float64)
    c = np.concatenate([np.zeros((1, s.shape[1])), np.cumsum(s, 0)])
    at = np.arange(k, t - k + 1)
    after = (c[at + k] - c[at]) / k
    before = (c[at] - c[at - k]) / k
    jump = ((after - before) ** 2).mean(1)
    typical = float(np.median(jump))
    out = []
    for i in np.flatnonzero(jump > factor * max(typical, 1e-30)):
        lo, hi = max(0, i - k), min(jump.size, i + k + 1)
        if jump[i] == jump[lo:hi].max():
            out.append(int(at[i]))
    return out
