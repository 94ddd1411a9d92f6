"""A simulated 4D-STEM scan of atoms, what the DECTRIS and Merlin senders
(:mod:`livedenoise.detectors.dectris`, :mod:`livedenoise.detectors.merlin`) send in the tests and
benchmarks; here, not beside them, because it draws on the movie simulator.

:func:`simulate_4dstem`: one diffraction pattern per scan position, Poisson counts: a bright-field
disc around the direct beam, and dark-field counts spread over an annulus whose total per position
follows the HAADF image of :func:`~livedenoise.sim.simulate_movie` (expected counts = dose x beam
fraction + pedestal, as that simulator's). Summed over the annulus (a virtual HAADF detector),
the patterns give back a noisy HAADF movie of the same atoms, at the counts the shipped models
were trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._movie import SimConfig, simulate_movie


@dataclass(frozen=True, slots=True)
class Scan4D:
    """A simulated 4D-STEM acquisition: ``patterns`` ``(frames * rows * cols, H, W)`` in scan order."""

    patterns: np.ndarray
    scan: tuple[int, int]
    adf_counts: np.ndarray  # (frames, rows, cols): the dark-field counts placed in the annulus
    truth: np.ndarray  # (frames, rows, cols): the HAADF image's beam fraction
    centre: tuple[float, float]  # (x, y) of the direct beam, pixels
    inner: float  # the annulus the dark-field counts fall in
    outer: float
    bf_radius: float


def simulate_4dstem(
    scan: tuple[int, int] = (32, 32),
    detector: int = 32,
    frames: int = 1,
    *,
    bf_counts: float = 3.0,
    centre_offset: tuple[float, float] = (1.3, -0.7),
    dtype: str = "<u2",
    seed: int = 0,
) -> Scan4D:
    """``frames`` scans of ``rows x cols`` positions, ``detector`` x ``detector`` px patterns.

    ``bf_counts``: mean counts per pixel of the bright-field disc (radius ``detector / 8``); the
    dark-field annulus spans ``detector / 4`` to ``0.45 detector`` around the beam, which sits
    ``centre_offset`` px off the detector's middle; beyond it, a faint diffuse background.
    """
    rows, cols = scan
    cfg = SimConfig(size=max(rows, cols, 16), frames=frames, seed=seed)
    truth = simulate_movie(cfg).truth[:, :rows, :cols]
    expected = cfg.dose * truth.astype(np.float64) + cfg.pedestal
    rng = np.random.default_rng(seed + 1)
    n = frames * rows * cols
    h = w = detector
    cx, cy = (w - 1) / 2 + centre_offset[0], (h - 1) / 2 + centre_offset[1]
    y, x = np.mgrid[:h, :w]
    r = np.hypot(x - cx, y - cy).ravel()
    bf_radius, inner, outer = detector / 8, detector / 4, 0.45 * detector
    bf = np.flatnonzero(r < bf_radius)
    ring = np.flatnonzero((r >= inner) & (r < outer))
    far = np.flatnonzero(r >= outer + 1)
    flat = np.zeros((n, h * w), np.uint32)
    flat[:, bf] = rng.poisson(bf_counts, (n, bf.size))
    adf = rng.poisson(expected.reshape(-1))
    owners = np.repeat(np.arange(n), adf)
    np.add.at(flat, (owners, ring[rng.integers(0, ring.size, owners.size)]), 1)
    flat[:, far] += rng.poisson(0.02, (n, far.size)).astype(np.uint32)
    patterns = flat.astype(dtype).reshape(n, h, w)
    return Scan4D(
        patterns, (rows, cols), adf.reshape(frames, rows, cols), truth, (cx, cy), inner, outer, bf_radius
    )
