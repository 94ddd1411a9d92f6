"""Atom finding: sub-pixel positions against simulated truth, intensities, the plateau rule, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from livedenoise.analysis import find_atoms
from livedenoise.analysis._atoms import frame_median, local_maxima
from livedenoise.scoring import match_points
from livedenoise.sim import SimConfig, render_atoms, simulate_movie


def test_positions_on_clean_simulated_frames_within_half_a_pixel() -> None:
    movie = simulate_movie(SimConfig(frames=6, seed=11))
    for t in range(movie.truth.shape[0]):
        frame = movie.truth[t] / movie.truth[t].max()  # a denoised-like [0, 1] frame
        found = find_atoms(frame)
        true = movie.positions[t]
        ti, _fi, dist = match_points(true, found.positions, radius=1.5)
        assert len(found) == true.shape[0]  # nothing missed, nothing extra
        assert ti.size == true.shape[0]
        assert dist.max() < 0.5
        # isolated single atoms are placed far better than that
        singles = np.flatnonzero(movie.groups[ti] == -1)
        assert np.median(dist[singles]) < 0.1


def test_exact_for_an_isolated_gaussian() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        x, y = rng.uniform(10, 22, 2)
        img = render_atoms(np.array([[x, y]]), 32, sigma=0.9, peak=1.0)
        (pos,) = find_atoms(img).positions
        assert pos == pytest.approx([x, y], abs=1e-3)


def test_intensities_are_integrated_and_proportional() -> None:
    pos = np.array([[10.2, 10.7], [30.6, 12.1], [20.0, 30.4]])
    img = render_atoms(pos[:1], 48, sigma=0.9, peak=1.0)
    img += render_atoms(pos[1:2], 48, sigma=0.9, peak=2.0)  # a brighter one (2 atoms in a column)
    img += render_atoms(pos[2:], 48, sigma=0.9, peak=0.5)
    img += 0.1  # flat background is removed (median)
    found = find_atoms(img, rel_threshold=0.2)
    assert len(found) == 3
    # sorted by height: brightest first
    assert found.positions[0] == pytest.approx(pos[1], abs=1e-2)
    # integrated over 5 x 5: ~2 pi sigma^2 * peak (99 % inside the window)
    expected = 2 * np.pi * 0.9**2 * np.array([2.0, 1.0, 0.5])
    assert found.intensities == pytest.approx(expected, rel=0.03)
    # heights are pixel values above the background: at most the peak (sub-pixel positions)
    assert np.all(found.heights <= np.array([2.0, 1.0, 0.5]) + 1e-6)
    assert np.all(found.heights > 0.75 * np.array([2.0, 1.0, 0.5]))
    assert found.background == pytest.approx(0.1, abs=1e-6)


def test_thresholds() -> None:
    img = render_atoms(np.array([[10.0, 10.0], [30.0, 30.0]]), 40, sigma=0.9, peak=1.0)
    img += render_atoms(np.array([[10.0, 30.0]]), 40, sigma=0.9, peak=0.2)
    assert len(find_atoms(img, rel_threshold=0.3)) == 2
    assert len(find_atoms(img, rel_threshold=0.1)) == 3
    assert len(find_atoms(img, threshold=0.5)) == 2
    assert len(find_atoms(img, threshold=0.1)) == 3
    assert len(find_atoms(np.zeros((16, 16)))) == 0


def test_plateau_gives_one_peak_and_edges_count() -> None:
    img = np.zeros((12, 12), np.float32)
    img[4:6, 4:7] = 1.0  # a saturated plateau
    img[0, 11] = 0.8  # a peak on the corner
    mask = local_maxima(img) & (img > 0)  # the zero background is a plateau too
    assert mask.sum() == 2 and mask[0, 11]
    found = find_atoms(img, threshold=0.5)
    assert len(found) == 2
    assert found.positions[0] == pytest.approx([5.0, 4.5], abs=0.5)


def test_close_pair_4px_apart_both_found() -> None:
    # second-layer atoms sit 4 px from their neighbours, on a diagonal in the worst case
    img = render_atoms(np.array([[20.0, 20.0], [22.83, 22.83]]), 48, sigma=0.875, peak=1.0)
    found = find_atoms(img)
    assert len(found) == 2


def test_frame_median_is_numpys_bit_for_bit() -> None:
    rng = np.random.default_rng(3)
    frames = [rng.normal(size=shape).astype(dtype) for shape in ((1, 1), (1, 2), (3, 3), (17, 9), (128, 128))
              for dtype in (np.float32, np.float64)]
    frames += [rng.poisson(0.7, (64, 80)).astype(np.float32), np.zeros((4, 4), np.float32)]  # ties
    frames += [rng.integers(0, 9, (5, 6)).astype(np.uint16)]
    inf = rng.normal(size=(8, 8)).astype(np.float32)
    inf[0, :5], inf[1, :3] = np.inf, -np.inf
    frames.append(inf)
    for f in frames:
        assert np.float64(frame_median(f)).tobytes() == np.float64(np.median(f)).tobytes(), (f.shape, f.dtype)
    nan = rng.normal(size=(8, 8)).astype(np.float32)
    nan[5, 2] = np.nan
    assert np.isnan(frame_median(nan)) and np.isnan(np.median(nan))


def _every_peak_then_threshold(frame: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The rule written plainly: every local maximum of the frame, those higher than the threshold
    above the median, tallest first (raster order among equals): their [x, y] pixels and heights."""
    f = frame.astype(np.float32)
    rows, cols = np.nonzero(local_maxima(f))
    heights = f[rows, cols] - float(np.median(f))
    keep = heights > threshold
    order = np.argsort(-heights[keep], kind="stable")
    return np.stack([cols[keep][order], rows[keep][order]], axis=1), heights[keep][order]


def test_peaks_found_among_the_high_pixels_are_those_of_the_whole_frame() -> None:
    """find_atoms looks for peaks only among the pixels above the threshold (a denoised frame: ~1 %
    of them); the peaks and their order must be those of the whole frame's local maxima."""
    rng = np.random.default_rng(4)
    movie = simulate_movie(SimConfig(frames=4, seed=12))
    frames = [t / t.max() + rng.normal(0, 0.05, t.shape) for t in movie.truth]  # noisy: many small peaks
    frames.append(np.round(rng.uniform(0, 3, (40, 50))).astype(np.float32) / 3)  # plateaus and ties
    for f in frames:
        for threshold in (0.0, 0.1, 0.4, 0.9):
            found = find_atoms(f, threshold=threshold)
            pixels, heights = _every_peak_then_threshold(f, threshold)
            assert len(found) == len(pixels) > 0 or threshold == 0.9
            assert np.array_equal(found.heights, heights)
            assert np.all(np.abs(found.positions - pixels) <= 0.5)  # sub-pixel offsets stay within the pixel


def test_fast_on_128() -> None:
    frame = simulate_movie(SimConfig(frames=1)).truth[0]
    find_atoms(frame)
    t0 = time.perf_counter()
    for _ in range(50):
        find_atoms(frame)
    assert (time.perf_counter() - t0) / 50 < 0.005  # ~1 ms here; generous for CI


def test_rejects_non_2d() -> None:
    with pytest.raises(ValueError):
        find_atoms(np.zeros((2, 8, 8)))
