"""PSNR after the best affine intensity fit: the one definition every comparison against truth uses.

A denoiser's output has its own units (a model gives [0, 1], a filter gives counts), so each frame
d is mapped to ``a*d + c`` with the least-squares a and c that best match the truth t before the
error is taken (``evaluate``'s docstring says why; the score's gain over raw estimates the ratio of
two such errors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def affine_fit(denoised: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Least-squares ``a, c`` minimising ``|a*denoised + c - truth|^2`` (a = 0 for a flat input)."""
    d = np.asarray(denoised, np.float64).ravel()
    t = np.asarray(truth, np.float64).ravel()
    dm, tm = d.mean(), t.mean()
    dd = d - dm
    var = float((dd * dd).sum())  # not np.dot: BLAS threads crawl on a busy machine
    a = float((dd * (t - tm)).sum()) / var if var > 0 else 0.0
    return a, float(tm - a * dm)


def psnr(estimate: np.ndarray, truth: np.ndarray, data_range: float) -> float:
    """PSNR in dB; inf when the two are equal."""
    mse = float(np.mean((np.asarray(estimate, np.float64) - np.asarray(truth, np.float64)) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


@dataclass(frozen=True)
class FitErrors:
    """Per frame: the affine fit (``slope``, ``offset``), its mean squared error, the truth's variance."""

    slope: np.ndarray
    offset: np.ndarray
    mse: np.ndarray
    truth_var: np.ndarray

    def psnr(self, data_range: float) -> np.ndarray:
        """dB per frame against ``data_range`` (inf where the fit is exact)."""
        with np.errstate(divide="ignore"):
            return 10.0 * np.log10(data_range**2 / self.mse)

    @property
    def r2(self) -> np.ndarray:
        """The share of the truth's variance the fitted frame explains."""
        return 1.0 - self.mse / np.maximum(self.truth_var, 1e-30)


def fit_errors(denoised: np.ndarray, truth: np.ndarray) -> FitErrors:
    """:func:`affine_fit` of each frame of ``denoised`` (T, H, W) to the same frame of ``truth``."""
    rows = []
    for d, t in zip(np.asarray(denoised), np.asarray(truth), strict=True):
        a, c = affine_fit(d, t)
        t64 = np.asarray(t, np.float64)
        r = a * np.asarray(d, np.float64) + c - t64
        rows.append((a, c, float(np.mean(r * r)), float(t64.var())))
    slope, offset, mse, var = (np.array(col, np.float64) for col in zip(*rows, strict=True)) if rows else [np.zeros(0)] * 4
    return FitErrors(slope, offset, mse, var)
