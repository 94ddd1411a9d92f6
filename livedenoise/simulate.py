"""Simulated low-dose HAADF-STEM movies of heavy atoms on a light support, with ground truth.

The project makes its own test data here (nothing is downloaded): ``replay --synthetic`` streams
it, the tests and the default model's training use it, and ``livedenoise simulate movie`` writes
it to TIFF with its truth and atom positions.

Model (per frame): truth = carbon-like background + sum of Gaussian atomic peaks, in fraction of
the beam; expected counts = dose * truth + dark pedestal; counts ~ Poisson. See
``docs/simulation.md`` for the full noise model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class SimConfig:
    """A simulated acquisition. ``dose`` is incident electrons per pixel per frame."""

    size: int = 128
    frames: int = 48
    dose: float = 300.0
    n_single: int = 10
    atom_sigma: float = 0.9  # px, Gaussian peak width (FWHM ~ 2.1 px at 0.4 A/px)
    atom_peak: float = 8.3e-3  # beam fraction at a single atom's peak
    background: float = 2.4e-4  # carbon support, beam fraction
    gradient: float = 0.0  # relative increase of background thickness left -> right
    pedestal: float = 0.5  # dark counts per pixel
    jitter: float = 0.35  # px per frame, random walk of single atoms
    seed: int = 0


@dataclass(frozen=True, slots=True)
class Movie:
    noisy: np.ndarray  # (T, H, W) float32 counts
    truth: np.ndarray  # (T, H, W) float32 beam fraction
    positions: np.ndarray  # (T, K, 2) float32, [x, y] = [column, row] in pixels


def _render(positions: np.ndarray, size: int, sigma: float, peak: float) -> np.ndarray:
    """Sum of Gaussian peaks at sub-pixel positions (separable: K x size work per axis)."""
    grid = np.arange(size, dtype=np.float32)
    gx = np.exp(-((grid[None, :] - positions[:, 0:1]) ** 2) / (2 * sigma**2))
    gy = np.exp(-((grid[None, :] - positions[:, 1:2]) ** 2) / (2 * sigma**2))
    return (peak * gy.T @ gx).astype(np.float32)


def _support(cfg: SimConfig, rng: np.random.Generator) -> np.ndarray:
    """Static carbon-like background: smooth random texture around the mean, optional gradient."""
    noise = rng.standard_normal((cfg.size, cfg.size)).astype(np.float32)
    freq = np.fft.fftfreq(cfg.size)
    transfer = np.exp(-((freq[:, None] ** 2 + freq[None, :] ** 2) * (2 * np.pi * 1.5) ** 2) / 2)
    texture = np.fft.ifft2(np.fft.fft2(noise) * transfer).real
    texture = texture / (texture.std() + 1e-12)
    ramp = 1.0 + cfg.gradient * np.linspace(0.0, 1.0, cfg.size, dtype=np.float32)[None, :]
    return (cfg.background * ramp * (1.0 + 0.3 * texture)).clip(0).astype(np.float32)


def simulate_movie(cfg: SimConfig) -> Movie:
    """A movie of single atoms jittering around their sites, with its truth and positions."""
    rng = np.random.default_rng(cfg.seed)
    margin = 8.0
    sites = rng.uniform(margin, cfg.size - margin, size=(cfg.n_single, 2)).astype(np.float32)
    support = _support(cfg, rng)
    pos = sites.copy()
    noisy = np.empty((cfg.frames, cfg.size, cfg.size), np.float32)
    truth = np.empty_like(noisy)
    positions = np.empty((cfg.frames, cfg.n_single, 2), np.float32)
    for t in range(cfg.frames):
        pos += rng.normal(0.0, cfg.jitter, pos.shape).astype(np.float32) - 0.25 * (pos - sites)
        positions[t] = pos
        truth[t] = support + _render(pos, cfg.size, cfg.atom_sigma, cfg.atom_peak)
        noisy[t] = rng.poisson(cfg.dose * truth[t] + cfg.pedestal)
    return Movie(noisy, truth, positions)


def stream_frames(cfg: SimConfig, dtype: str = "<u2") -> Iterator[np.ndarray]:
    """Endless noisy frames for ``replay --synthetic``: the movie, played forwards and back."""
    movie = simulate_movie(cfg)
    frames = movie.noisy.astype(dtype)
    order = list(range(len(frames))) + list(range(len(frames) - 2, 0, -1))
    while True:
        for i in order:
            yield frames[i]
