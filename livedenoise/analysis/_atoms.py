"""Atom finding on a denoised frame: sub-pixel positions and integrated intensities of the peaks.

numpy only (the daemon imports it for ``serve --atoms``), vectorised, about a millisecond for a
128 x 128 frame. Noise2Atom's Ms2c maps each atom to a Gaussian-like peak on a flat background,
so a local-maximum search is enough; the same rule is used by ``livedenoise evaluate`` to score
every method (see ``docs/simulation.md`` and :mod:`livedenoise.scoring`).

The rule, step by step (``radius`` = r, default 1; ``window`` = w, default 2):

1. **Background** ``b``: the median of the frame (or the value given).
2. **Candidates**: pixels that are the maximum of their (2r+1) x (2r+1) neighbourhood (outside
   the frame counts as -inf). Ties on a plateau are broken in raster order: a pixel must be
   strictly greater than the neighbours before it and at least equal to those after it, so a
   plateau gives one peak, not several. r = 1 (3 x 3) keeps two atoms whose peak pixels are
   2 px apart: Pt atoms are ~2.1 px FWHM at 0.4 A/px, and the second-layer atoms of a cluster
   sit 4 px (1.6 A) from their neighbours, which a 5 x 5 window could merge.
3. **Threshold**: a candidate is kept when its height above ``b`` exceeds ``threshold`` (absolute,
   in the frame's units) or, when no absolute threshold is given, ``rel_threshold`` times the
   height of the frame's highest peak above ``b``.
4. **Sub-pixel position**: from the 3 x 3 window around the peak, the row sums and the column
   sums (the marginals) minus the background; along each axis the 3-point Gaussian estimator
   ``d = (ln m[-1] - ln m[+1]) / (2 (ln m[-1] - 2 ln m[0] + ln m[+1]))``, which is exact for a
   Gaussian peak; where a marginal is not positive, the 3-point parabola on the values instead.
   The offset is clipped to +-0.5 px.
5. **Integrated intensity**: the sum over the (2w+1) x (2w+1) window of (frame - b), i.e. ~99 %
   of a 2.1 px FWHM Gaussian for w = 2. Its unit is the frame's unit times pixels.

Positions are ``[x, y] = [column, row]`` in pixels; ``[j, i]`` is the centre of pixel ``[i, j]``.

>>> import numpy as np
>>> yy, xx = np.mgrid[:32, :32]
>>> frame = np.exp(-((xx - 10.3) ** 2 + (yy - 20.6) ** 2) / (2 * 0.9**2))
>>> found = find_atoms(frame)
>>> [[round(float(v), 3) for v in xy] for xy in found.positions]
[[10.3, 20.6]]
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["Atoms", "find_atoms", "local_maxima"]


@dataclass(frozen=True, slots=True)
class Atoms:
    """Peaks found in one frame, sorted by decreasing height."""

    positions: np.ndarray  # (K, 2) float32, [x, y] = [column, row], pixels
    intensities: np.ndarray  # (K,) float32, integrated (frame - background) over the window
    heights: np.ndarray  # (K,) float32, peak value minus background
    background: float  # the background level used
    threshold: float  # the absolute height threshold used (above background)

    def __len__(self) -> int:
        return int(self.positions.shape[0])


def local_maxima(frame: np.ndarray, radius: int = 1) -> np.ndarray:
    """Boolean mask of the pixels that are the maximum of their (2r+1)^2 window (one per plateau)."""
    if frame.ndim != 2:
        raise ValueError(f"need one 2-D frame, got shape {frame.shape}")
    h, w = frame.shape
    r = int(radius)
    pad = np.pad(frame, r, mode="constant", constant_values=-np.inf)
    mask = np.ones((h, w), dtype=bool)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy == 0 and dx == 0:
                continue
            view = pad[r + dy : r + dy + h, r + dx : r + dx + w]
            # neighbours before the pixel in raster order must be strictly lower, those after
            # may be equal: each plateau keeps exactly its first pixel.
            if (dy, dx) < (0, 0):
                mask &= frame > view
            else:
                mask &= frame >= view
    return mask


@lru_cache(maxsize=8)
def _neighbourhood(radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dy, dx) of the (2r+1)^2 - 1 neighbours, and which come before the pixel in raster order."""
    dy, dx = (a.ravel() for a in np.mgrid[-radius : radius + 1, -radius : radius + 1])
    centre = (dy == 0) & (dx == 0)
    dy, dx = dy[~centre], dx[~centre]
    return dy, dx, (dy < 0) | ((dy == 0) & (dx < 0))


def _peaks_among(f: np.ndarray, rows: np.ndarray, cols: np.ndarray, radius: int) -> np.ndarray:
    """:func:`local_maxima` at the pixels ``(rows, cols)`` only (finite or +inf values): one gather
    of their neighbours instead of (2r+1)^2 - 1 passes over the frame."""
    h, w = f.shape
    dy, dx, before = _neighbourhood(radius)
    rr = rows[:, None] + dy
    cc = cols[:, None] + dx
    outside = (rr < 0) | (rr >= h) | (cc < 0) | (cc >= w)  # -inf there: every such value is higher
    nb = f[np.minimum(np.maximum(rr, 0), h - 1), np.minimum(np.maximum(cc, 0), w - 1)]
    v = f[rows, cols][:, None]
    return (np.where(before, v > nb, v >= nb) | outside).all(axis=1)


def frame_median(frame: np.ndarray) -> float:
    """``float(np.median(frame))``, bit for bit, in a fifth of the time: one single-``kth``
    ``np.partition`` (numpy's SIMD selection; two ``kth`` take its slow path, as ``np.median``
    does) and the largest of the lower half; NaN if the frame holds one, as ``np.median``."""
    x = np.asarray(frame).ravel()
    n = x.size
    if n == 0 or x.dtype.kind != "f":
        return float(np.median(x))
    k = n // 2
    part = np.partition(x, k)
    upper = part[k]
    if np.isnan(part[k:].max()):  # NaN sorts last; np.median returns it
        return float("nan")
    if n % 2:
        return float(upper)
    return float((part[:k].max() + upper) / 2)  # np.median's mean of the two, in the frame's dtype


_TINY = float(np.finfo(np.float64).tiny)


def _offsets(m_minus: np.ndarray, m0: np.ndarray, m_plus: np.ndarray) -> np.ndarray:
    """Sub-pixel offset along one axis from three samples (Gaussian fit, parabola fallback)."""
    ok = (m_minus > 0) & (m0 > 0) & (m_plus > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        lm, l0, lp = (np.log(np.maximum(v, _TINY)) for v in (m_minus, m0, m_plus))
        den_g = lm - 2 * l0 + lp
        d_g = (lm - lp) / (2 * den_g)
        den_p = m_minus - 2 * m0 + m_plus
        d_p = (m_minus - m_plus) / (2 * den_p)
    d = np.where(ok & (den_g < 0), d_g, np.where(den_p < 0, d_p, 0.0))
    d[~np.isfinite(d)] = 0.0
    return np.minimum(np.maximum(d, -0.5), 0.5)


def find_atoms(
    frame: np.ndarray,
    threshold: float | None = None,
    rel_threshold: float = 0.3,
    radius: int = 1,
    background: float | None = None,
    window: int = 2,
) -> Atoms:
    """Find the atoms (bright peaks) of one 2-D frame; see the module docstring for the rule.

    ``threshold``: minimum peak height above the background, in the frame's units; when None,
    ``rel_threshold`` x (highest peak - background). ``background``: None = the frame's median.
    """
    f = np.asarray(frame, dtype=np.float32)
    if f.ndim != 2:
        raise ValueError(f"need one 2-D frame, got shape {f.shape}")
    h, w = f.shape
    b = frame_median(f) if background is None else float(background)
    rad = int(radius)
    if threshold is None:
        # the frame's highest pixel is a peak (the first of its value in raster order), so the
        # highest peak is the frame's maximum; a NaN anywhere takes the full path below
        top_px = f.max() if f.size else None
        top = float(top_px - b) if top_px is not None and not np.isnan(top_px) else None
        thr = rel_threshold * top if top is not None else None
    else:
        thr = float(threshold)
    rows = cols = None
    if thr is not None:
        # candidates: the pixels high enough, computed as the kept peaks' heights are; the peak
        # test then looks at their neighbours only (a denoised frame: ~1 % of the pixels)
        high = f - b > thr
        if threshold is None:
            high &= f - b > 0
        rows, cols = np.nonzero(high)
        if rows.size * _neighbourhood(rad)[0].size <= f.size:
            peak = _peaks_among(f, rows, cols, rad)
        else:
            peak = local_maxima(f, rad)[rows, cols]
        rows, cols = rows[peak], cols[peak]
        heights = f[rows, cols] - b
    else:  # every peak, or a relative threshold on a frame with NaN
        rows, cols = np.nonzero(local_maxima(f, rad))
        heights = f[rows, cols] - b
        if threshold is None:
            top = float(heights.max()) if heights.size else 0.0
            thr = rel_threshold * top
        keep = heights > thr
        if threshold is None and heights.size:
            keep &= heights > 0
        rows, cols, heights = rows[keep], cols[keep], heights[keep]
    order = np.argsort(-heights, kind="stable")
    rows, cols, heights = rows[order], cols[order], heights[order]
    if rows.size == 0:
        empty = np.zeros((0,), np.float32)
        return Atoms(np.zeros((0, 2), np.float32), empty, empty, b, thr)

    # one (2m+1)^2 window per peak, frame - b in float64, edges repeated outward
    r = int(window)
    m = max(r, 1)
    k = np.arange(-m, m + 1)
    ri = np.minimum(np.maximum(rows[:, None] + k, 0), h - 1)
    ci = np.minimum(np.maximum(cols[:, None] + k, 0), w - 1)
    win = np.subtract(f[ri[:, :, None], ci[:, None, :]], b, dtype=np.float64)
    # 3 x 3 marginals for the sub-pixel fit: along x (sums over rows), then along y
    win3 = win if m == 1 else np.ascontiguousarray(win[:, m - 1 : m + 2, m - 1 : m + 2])
    marg = np.stack([win3.sum(axis=1), win3.sum(axis=2)])
    dx, dy = _offsets(marg[..., 0], marg[..., 1], marg[..., 2])
    # integrated intensity over the (2r+1)^2 window
    if r != m:
        win = np.ascontiguousarray(win[:, m - r : m + r + 1, m - r : m + r + 1])
    intens = win.sum(axis=(1, 2))
    pos = np.stack([cols + dx, rows + dy], axis=1).astype(np.float32)
    return Atoms(pos, intens.astype(np.float32), heights.astype(np.float32), b, thr)
