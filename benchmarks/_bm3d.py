"""BM3D for photon counts: the generalised Anscombe transform (GAT), its exact unbiased inverse, and
the noise PSD of the row offsets (``benchmarks/quality.py``'s docstring says why each is needed:
the algebraic inverse is biased on the scale of an atom's contrast at dose 100, and white noise
leaves the row offsets as streaks).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


class GAT:
    """Generalised Anscombe transform for Poisson(lambda) + N(0, sigma2), gain 1, and its exact
    unbiased inverse (tabulated ``E[f(z) | lambda]``, inverted by interpolation)."""

    def __init__(self, sigma2: float, lam_max: float):
        from scipy.stats import poisson

        self.sigma2 = float(sigma2)
        s = math.sqrt(self.sigma2)
        n = np.linspace(-7.0, 7.0, 1401) * s
        w = np.exp(-0.5 * (n / s) ** 2) if s > 0 else np.ones(1)
        n = n if s > 0 else np.zeros(1)
        w = w / w.sum()
        lam_max = float(max(lam_max, 10.0))
        self.lam = lam_max * np.linspace(0.0, 1.0, 600) ** 2  # dense at low counts
        kmax = int(lam_max + 12 * math.sqrt(lam_max) + 30)
        k = np.arange(kmax + 1)
        fk = (w[None, :] * self.forward(k[:, None] + n[None, :])).sum(axis=1)  # E_n[f(k + n)]
        fk2 = (w[None, :] * self.forward(k[:, None] + n[None, :]) ** 2).sum(axis=1)
        p = poisson.pmf(k[None, :], self.lam[:, None])  # (L, K)
        self.mean = p @ fk
        self.std = np.sqrt(np.maximum(p @ fk2 - self.mean**2, 0.0))

    def forward(self, z: np.ndarray) -> np.ndarray:
        return 2.0 * np.sqrt(np.maximum(np.asarray(z, np.float64) + 0.375 + self.sigma2, 0.0))

    def inverse(self, d: np.ndarray) -> np.ndarray:
        d = np.asarray(d, np.float64)
        out = np.interp(d, self.mean, self.lam)  # exact unbiased inverse inside the table
        above = d > self.mean[-1]
        if above.any():  # asymptotic (algebraic) inverse beyond it: unbiased there to < 1e-3
            out[above] = (d[above] / 2) ** 2 - 0.375 - self.sigma2
        return out

    def stabilised_std(self, lam: float) -> float:
        return float(np.interp(lam, self.lam, self.std))


def bm3d_psd(shape: tuple[int, int], sigma_psd: float, line_std: float) -> np.ndarray:
    """Noise PSD after the transform, in ``bm3d``'s convention (unshifted FFT layout; white noise of
    std s is ``s^2 * H * W`` everywhere): ``sigma_psd`` white, plus a per-row offset of std
    ``line_std``, whose power lies on the zero horizontal frequency only (column 0)."""
    h, w = shape
    psd = np.full((h, w), sigma_psd**2 * h * w)
    psd[:, 0] += line_std**2 * w * w * h
    return psd


def bm3d_gat(sigma_psd: float, gat: GAT, line_std: float = 0.0) -> Callable[[np.ndarray], np.ndarray]:
    """BM3D frame by frame between the GAT and its inverse, as a method of the baselines."""
    def run(frames: np.ndarray) -> np.ndarray:
        import bm3d

        if not hasattr(np, "trapz"):  # bm4d 4.2.5's coloured-noise path calls np.trapz (gone in numpy 2.4)
            np.trapz = np.trapezoid
        out = np.empty(frames.shape, np.float32)
        psd = bm3d_psd(frames.shape[1:], sigma_psd, line_std) if line_std > 0 else sigma_psd
        for i, f in enumerate(frames):
            out[i] = gat.inverse(bm3d.bm3d(gat.forward(f), psd))
        return out

    return run
