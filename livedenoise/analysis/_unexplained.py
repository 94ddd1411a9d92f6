"""What a denoised frame leaves unexplained in its raw frame: one number per frame that rises when
the denoiser *erases* atoms (evidence, :mod:`._evidence`, catches the atoms it invents).

A denoiser trained on sparse atoms and pointed at a lattice shows a clean, convincing image with
most columns gone (issue 19). Those columns are still in the raw counts: mapped back to counts,
the denoised image leaves them behind as a positive residual that clusters where an atom should
be, far beyond the counting noise. numpy only (the daemon computes it per frame, off the hot
path), vectorised: about 0.35 ms at 128² (``benchmarks/unexplained.py``).

The figure, per frame (raw in detector counts, denoised the published [0, 1] image):

1. **Back to counts**: ``fit = a * denoised + b``, ``a`` and ``b`` by least squares over the
   frame (``a`` floored at 0: an output anti-correlated with its input explains nothing).
2. **Residual** ``r = raw - fit`` and its **noise**: Poisson plus Gaussian read noise,
   ``var = max(fit, 0) + s²``; ``s²`` estimated from the frame itself, as the mean of
   ``r² - max(fit, 0)`` over the pixels whose residual is within 4 sigma (one trimming pass, so
   erased atoms do not count as noise). The read-noise term also absorbs what else the model
   leaves at random (scan-line noise, a slightly wrong peak shape).
3. **Patches**: around each pixel, the counts of an atom-sized square ((2 R + 1)², R = 1.5
   ``sigma`` rounded, at least 1: 3 x 3 for the project's 0.875 px atoms, ~84 % of an atom's
   core) against the counts the fit expects there, both shifted by ``s²`` per pixel (the
   shifted-Poisson approximation of Poisson plus Gaussian noise, as in :mod:`._evidence`), and
   the signed root of their Poisson deviance: a z-score, well calibrated even at the ~0.5 counts
   per pixel of a low-dose background, where a Gaussian z of the residual is not (its positive
   tail is far heavier: at that dose it flagged ~200 px of every noise-only frame at z 4).
   This is the matched filter for an atom: a box of its core, summed.
4. **Clusters**: the patches whose z exceeds ``z_threshold`` (more counts than expected), grown
   to their squares; the unexplained counts are the residual summed over them (floored at 0).

``fraction`` relates them to the atoms' counts in the frame: unexplained / (unexplained +
counts the denoised atoms explain, ``a`` times the sum of the denoised frame above its median
where it is 10 % of the way from the median to its top or more): 0 where the output explains
everything, near 1 where it shows no atom at all of those the raw frame holds.

Two limits, and what answers them. One low-dose frame holds few counts: a MoS2 column at 5
counts is at z ~ 4 in its patch, so an erased lattice hardly shows in single frames;
:func:`unexplained_sum` takes the sum of N frames (N times the signal for sqrt(N) the noise).
And the read noise estimated on one frame's residual takes an erased lattice for noise (it is
everywhere): :func:`read_noise_of` measures it on consecutive frames instead, to be passed in.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> yy, xx = np.mgrid[:64, :64]
>>> atoms = [(16.0, 20.0), (40.0, 44.0)]
>>> clean = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 0.9**2)) for x, y in atoms)
>>> raw = rng.poisson(1.0 + 30.0 * clean).astype(np.float32)
>>> both, one = unexplained(raw, clean), unexplained(raw, np.exp(-((xx - 16) ** 2 + (yy - 20) ** 2) / 1.62))
>>> bool(both.fraction < 0.1), bool(one.counts > 100), round(one.fraction, 1)
(True, True, 0.5)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from ._evidence import ATOM_SIGMA

__all__ = ["UNEXPLAINED_Z", "Unexplained", "read_noise_of", "unexplained", "unexplained_sum"]

#: Patch z above which a residual counts as unexplained. On simulated 128² frames whose truth is
#: the "denoised" image, noise alone crosses it in about one frame in three, by ~12 counts.
UNEXPLAINED_Z = 4.0
_TRIM_Z = 4.0  # residuals beyond this (sigma) are left out of the read-noise estimate
_ATOM_LEVEL = 0.1  # denoised pixels this far from the median to the top are atoms (the explained counts)


@dataclass(frozen=True, slots=True)
class Unexplained:
    """One frame's unexplained signal (see the module docstring)."""

    counts: float  # raw counts the denoised frame leaves unexplained, summed where they cluster
    fraction: float  # of the frame's atomic counts (unexplained + explained), in [0, 1]; 0 without atoms
    pixels: int  # pixels in the clusters
    gain: float  # a: counts per denoised unit (the affine map back to counts)
    offset: float  # b: counts where the denoised frame is 0
    read_noise: float  # s: the extra noise (counts) beside Poisson, estimated from the frame

    def to_dict(self) -> dict[str, float | int]:
        return {
            "counts": self.counts, "fraction": self.fraction, "pixels": self.pixels, "gain": self.gain,
            "offset": self.offset, "read_noise": self.read_noise,
        }


def _reach(sigma: float) -> int:
    """Half-width of the patch: a (2 reach + 1)² square holds an atom of width ``sigma`` (~1.5 sigma)."""
    return max(1, round(1.5 * float(sigma)))


def _box(image: np.ndarray, reach: int) -> np.ndarray:
    """Sums of ``image`` over the (2 reach + 1)² square around each pixel, the part inside the frame.

    Shifted slices for small squares (the atoms' 3 x 3: four adds), cumulative sums (float64, so
    1024² frames of large counts keep their digits) for larger ones.
    """
    if reach <= 2:
        out = np.asarray(image, np.float32)
        for axis in (0, 1):
            n = out.shape[axis]
            acc = out.copy()
            for k in range(1, reach + 1):
                if axis == 0:
                    acc[k:] += out[: n - k]
                    acc[: n - k] += out[k:]
                else:
                    acc[:, k:] += out[:, : n - k]
                    acc[:, : n - k] += out[:, k:]
            out = acc
        return out
    out = np.asarray(image)
    for axis in (0, 1):
        n = out.shape[axis]
        c = np.zeros((n + 1, out.shape[1 - axis]) if axis == 0 else (out.shape[0], n + 1), np.float64)
        if axis == 0:
            np.cumsum(out, axis=0, dtype=np.float64, out=c[1:])
        else:
            np.cumsum(out, axis=1, dtype=np.float64, out=c[:, 1:])
        hi, lo = _bounds(n, reach)
        out = np.take(c, hi, axis=axis) - np.take(c, lo, axis=axis)
    return out.astype(np.float32)


@lru_cache(maxsize=16)
def _bounds(n: int, reach: int) -> tuple[np.ndarray, np.ndarray]:
    i = np.arange(n)
    return np.minimum(i + reach + 1, n), np.maximum(i - reach, 0)


@lru_cache(maxsize=16)
def _box_ones(shape: tuple[int, int], reach: int) -> np.ndarray:
    """Pixels of each (2 reach + 1)² square that lie inside the frame."""
    (hr, lr), (hc, lc) = _bounds(shape[0], reach), _bounds(shape[1], reach)
    return np.outer(hr - lr, hc - lc).astype(np.float32)


def _dilate(mask: np.ndarray, reach: int) -> np.ndarray:
    """``mask`` grown by a (2 reach + 1)² square (separable: a max along each axis)."""
    if reach <= 0 or not mask.any():
        return mask
    h, w = mask.shape
    pad = np.zeros((h + 2 * reach, w), bool)
    pad[reach : reach + h] = mask
    rows = pad[0:h].copy()
    for k in range(1, 2 * reach + 1):
        rows |= pad[k : k + h]
    pad = np.zeros((h, w + 2 * reach), bool)
    pad[:, reach : reach + w] = rows
    out = pad[:, 0:w].copy()
    for k in range(1, 2 * reach + 1):
        out |= pad[:, k : k + w]
    return out


def _hot(y: np.ndarray, pois: np.ndarray, s2: float, reach: int, z_threshold: float) -> np.ndarray:
    """Pixels of the atom-sized squares whose counts exceed the expected ones beyond ``z_threshold``
    (signed root of the shifted-Poisson deviance), the squares grown to their full size."""
    shift = np.float32(s2 + 1e-3)
    ones = _box_ones(y.shape, reach) * shift
    seen = np.maximum(_box(y, reach) + ones, np.float32(0))
    expect = _box(pois, reach) + ones
    with np.errstate(divide="ignore", invalid="ignore"):
        dev = seen * np.log(np.where(seen > 0, seen / expect, 1)) - (seen - expect)
    hot = (seen > expect) & (dev > np.float32(0.5 * z_threshold**2))
    return _dilate(hot, reach)


def unexplained(
    raw: np.ndarray,
    denoised: np.ndarray,
    sigma: float = ATOM_SIGMA,
    *,
    z_threshold: float = UNEXPLAINED_Z,
    read_noise: float | None = None,
) -> Unexplained:
    """The raw counts that ``denoised`` (its [0, 1] display image) leaves unexplained in ``raw``.

    ``sigma``: the atoms' Gaussian width in px (sets the patch). ``read_noise``: the detector's
    Gaussian noise in counts, if known; None estimates the extra noise from the frame.
    """
    frame = np.asarray(raw)
    den = np.asarray(denoised)
    if frame.ndim != 2 or frame.shape != den.shape:
        raise ValueError(f"need a raw and a denoised frame of one 2-D shape, got {frame.shape} and {den.shape}")
    if not sigma > 0:
        raise ValueError(f"need sigma > 0, got {sigma}")
    x = den.astype(np.float32, copy=False)
    y = frame.astype(np.float32, copy=False)
    n = x.size
    # 1. least-squares affine map back to counts (float64 sums: float32 loses digits at 1024²)
    mx = float(x.mean(dtype=np.float64))
    my = float(y.mean(dtype=np.float64))
    xc = x - np.float32(mx)
    var_x = float(np.dot(xc.ravel(), xc.ravel())) / n
    a = max(float(np.dot(xc.ravel(), y.ravel())) / n / var_x, 0.0) if var_x > 1e-12 else 0.0
    b = my - a * mx
    fit = xc * np.float32(a)
    fit += np.float32(my)  # a * x + b, as a * (x - mean x) + mean y
    # 2. residual, and the noise beside Poisson (read noise) with the patches that exceed it
    r = y - fit
    pois = np.maximum(fit, np.float32(0))
    if read_noise is None:
        excess = r * r - pois
        s2 = max(float(excess.mean(dtype=np.float64)), 0.0)
        keep = r * r <= np.float32(_TRIM_Z**2) * (pois + np.float32(s2 + 1e-6))
        s2 = max(float(excess[keep].mean(dtype=np.float64)), 0.0) if keep.any() else s2
    else:
        s2 = float(read_noise) ** 2
    hot = _hot(y, pois, s2, _reach(sigma), z_threshold)
    # 3. the residual counts in the clusters, and the atoms' counts the denoised frame explains
    pixels = int(np.count_nonzero(hot))
    counts = max(float(r[hot].sum(dtype=np.float64)), 0.0) if pixels else 0.0
    sample = x[:: max(1, x.shape[0] // 64), :: max(1, x.shape[1] // 64)]  # ~4k pixels: cheap percentiles
    floor, top = (float(v) for v in np.percentile(sample, [50, 99.9]))
    above = x - np.float32(floor)
    explained = a * float(above[above > np.float32(_ATOM_LEVEL * (top - floor))].sum(dtype=np.float64))
    total = counts + explained
    return Unexplained(
        counts=counts, fraction=counts / total if total > 0 else 0.0, pixels=pixels, gain=a, offset=b,
        read_noise=math.sqrt(s2),
    )


def read_noise_of(frames: np.ndarray, pairs: int = 8) -> float | None:
    """The noise beside Poisson (counts, the read noise) of raw ``(T, H, W)`` frames in counts,
    from consecutive frames: ``var(f[t+1] - f[t]) / 2 - mean(f)`` (Poisson's variance is its
    mean), the median over the last ``pairs`` pairs. None for fewer than two frames.

    Give it to :func:`unexplained` where frames of a stream are at hand: estimated on one frame's
    residual, a lattice the denoiser erased everywhere reads as noise and hides itself (measured
    on a simulated MoS2 movie through the shipped ``default`` model: 0.63 counts instead of 0.29).
    What moves between two frames counts as noise here, so the figure errs high, never low.

    >>> rng = np.random.default_rng(0)
    >>> frames = rng.poisson(0.6, (4, 64, 64)) + rng.normal(0, 0.5, (4, 64, 64))
    >>> round(read_noise_of(frames), 1)
    0.5
    """
    f = np.asarray(frames)
    if f.ndim != 3 or f.shape[0] < 2:
        return None
    f = f[-(pairs + 1) :].astype(np.float32, copy=False)
    d = np.diff(f, axis=0)
    half_var = 0.5 * np.mean(d.astype(np.float64) ** 2, axis=(1, 2))
    mean = 0.5 * (f[1:].mean(axis=(1, 2), dtype=np.float64) + f[:-1].mean(axis=(1, 2), dtype=np.float64))
    return math.sqrt(max(float(np.median(half_var - np.maximum(mean, 0.0))), 0.0))


def unexplained_sum(
    raws: np.ndarray,
    denoised: np.ndarray,
    sigma: float = ATOM_SIGMA,
    *,
    z_threshold: float = UNEXPLAINED_Z,
    read_noise: float | None = None,
) -> Unexplained:
    """:func:`unexplained` of the sum of ``(N, H, W)`` raw frames against the sum of their
    denoised frames, in counts per frame (``counts``, ``offset`` and ``read_noise`` divided back).

    One frame at a low dose holds too few counts to tell an erased atomic column from noise (a
    MoS2 column at 5 counts per frame sits at z ~ 4 in its 3 x 3 patch); a static sample's sum
    over N frames holds N times the signal and sqrt(N) times the noise (a sum of Poisson counts is
    Poisson). ``read_noise``: per frame; None estimates it with :func:`read_noise_of`.

    >>> rng = np.random.default_rng(1)
    >>> yy, xx = np.mgrid[:48, :48]
    >>> clean = np.exp(-((xx - 24) ** 2 + (yy - 24) ** 2) / 1.62)  # one atom, 2 counts at its peak
    >>> raws = rng.poisson(0.6 + 2.0 * clean, (16, 48, 48)).astype(np.float32)
    >>> blank = np.zeros_like(raws)
    >>> round(unexplained(raws[0], blank[0]).counts), round(unexplained_sum(raws, blank).counts)  # counts per frame
    (0, 11)
    """
    r = np.asarray(raws)
    d = np.asarray(denoised)
    if r.ndim != 3 or r.shape != d.shape or r.shape[0] < 1:
        raise ValueError(f"need raw and denoised frames of one (N, H, W) shape, got {r.shape} and {d.shape}")
    n = r.shape[0]
    s = read_noise_of(r) if read_noise is None else float(read_noise)
    total = unexplained(
        r.sum(axis=0, dtype=np.float32), d.sum(axis=0, dtype=np.float32), sigma, z_threshold=z_threshold,
        read_noise=None if s is None else s * math.sqrt(n),
    )
    return replace(
        total, counts=total.counts / n, offset=total.offset / n, read_noise=total.read_noise / math.sqrt(n)
    )
