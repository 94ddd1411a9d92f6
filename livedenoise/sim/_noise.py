"""The detector's noise: one model for every simulated acquisition (sparse, dense, moving).

Expected counts = ``dose`` x clean signal + ``pedestal``; then, frame by frame: occasional +-1 px
scan-line shifts of those expected counts (not in the truth), Poisson counting, Gaussian read
noise per pixel and a Gaussian offset per scan line (row). The defaults are dev-D's (README of
``../shared/data/dev-D``). numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["NoiseConfig", "acquire"]


@dataclass(frozen=True, slots=True)
class NoiseConfig:
    """A detector and its dose. ``dose``: counts per unit of the clean signal (incident electrons
    per pixel per frame when the signal is a fraction of the beam; the peak counts when it is a
    contrast scaled to 1 at the brightest columns); the rest in counts."""

    dose: float = 300.0
    pedestal: float = 0.5  # dark / stray counts per pixel, not scaled by the dose
    read_noise: float = 0.25  # Gaussian, per pixel
    line_noise: float = 0.15  # Gaussian offset per scan line (row)
    line_shift: float = 0.02  # probability per row of a +-1 px shift along x

    def __post_init__(self) -> None:
        if not (self.dose >= 0 and self.pedestal >= 0 and self.read_noise >= 0 and self.line_noise >= 0):
            raise ValueError(f"noise: dose, pedestal, read and line noise must be >= 0, got {self}")
        if not 0 <= self.line_shift <= 1:
            raise ValueError(f"noise: line_shift is a probability per row, got {self.line_shift}")

    def expected(self, signal: np.ndarray, scale: float = 1.0) -> np.ndarray:
        """Expected counts (float64) of a clean ``signal``, the dose multiplied by ``scale``."""
        return (self.dose * scale) * np.asarray(signal).astype(np.float64) + self.pedestal


def acquire(
    signal: np.ndarray, noise: NoiseConfig, rng: np.random.Generator, dose_scale: np.ndarray | None = None
) -> np.ndarray:
    """Detector counts (float32, ``(T, H, W)``) of a clean ``(T, H, W)`` signal: the expected counts
    :meth:`NoiseConfig.expected` (the dose times ``dose_scale[t]`` in frame ``t``: a decaying
    beam), scan-line shifts of them, Poisson, read and line noise.

    Frame by frame, so the float64 expected counts never exist for the whole movie at once; the
    random numbers are drawn in the order the simulators always drew them (their movies are the
    same bit for bit for a given seed).
    """
    sig = np.asarray(signal)
    if sig.ndim != 3:
        raise ValueError(f"acquire needs a (frames, height, width) signal, got shape {sig.shape}")
    if dose_scale is not None and len(dose_scale) != sig.shape[0]:
        raise ValueError(f"dose_scale has {len(dose_scale)} values for {sig.shape[0]} frames")
    counts = np.empty(sig.shape, np.float32)
    h, w = sig.shape[1:]
    for t in range(sig.shape[0]):
        lam = noise.expected(sig[t], 1.0 if dose_scale is None else float(dose_scale[t]))
        if noise.line_shift > 0:
            rows = np.flatnonzero(rng.random(h) < noise.line_shift)
            for r, s in zip(rows, rng.choice([-1, 1], rows.size)):
                row = lam[r]
                lam[r] = np.concatenate([row[:1], row[:-1]]) if s > 0 else np.concatenate([row[1:], row[-1:]])
        c = rng.poisson(np.maximum(lam, 0.0)).astype(np.float32)
        if noise.read_noise > 0:
            c += np.float32(noise.read_noise) * rng.standard_normal((h, w), dtype=np.float32)
        if noise.line_noise > 0:
            c += np.float32(noise.line_noise) * rng.standard_normal((h, 1), dtype=np.float32)
        counts[t] = c
    return counts
