"""The simulator: deterministic, fast, the dev-D-like statistics, the scene's motion rules."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from livedenoise.sim import Movie, SimConfig, as_dtype, movie_metadata, render_atoms, simulate_movie, stream_frames


@pytest.fixture(scope="module")
def movie() -> Movie:
    return simulate_movie(SimConfig(seed=1))


def test_shapes_types_and_groups(movie: Movie) -> None:
    assert movie.noisy.shape == movie.truth.shape == (48, 128, 128)
    assert movie.noisy.dtype == movie.truth.dtype == np.float32
    # dev-D's scene: clusters of 5 and 12 atoms then 10 single atoms, in that order
    assert movie.positions.shape == (48, 27, 2)
    assert movie.groups.tolist() == [0] * 5 + [1] * 12 + [-1] * 10
    # every atom stays inside the field, with a margin
    assert movie.positions.min() > 8 and movie.positions.max() < 120


def test_deterministic_with_seed() -> None:
    cfg = SimConfig(size=64, frames=4, seed=7)
    a, b = simulate_movie(cfg), simulate_movie(cfg)
    assert np.array_equal(a.noisy, b.noisy) and np.array_equal(a.positions, b.positions)
    assert not np.array_equal(a.noisy, simulate_movie(SimConfig(size=64, frames=4, seed=8)).noisy)


def test_fast_enough() -> None:
    simulate_movie(SimConfig(frames=2))  # warm-up
    t0 = time.perf_counter()
    simulate_movie(SimConfig())
    assert time.perf_counter() - t0 < 1.0


def test_statistics_match_dev_d(movie: Movie) -> None:
    """Numbers from dev-D's README at 300 e-/px: mean 0.59 counts, noisy ~ 300 truth + 0.5."""
    assert movie.noisy.mean() == pytest.approx(0.59, abs=0.03)
    slope, offset = np.polyfit(movie.truth.ravel(), movie.noisy.ravel(), 1)
    assert slope == pytest.approx(298, rel=0.02) and offset == pytest.approx(0.5, abs=0.03)
    assert np.median(movie.truth) == pytest.approx(2.4e-4, rel=0.1)
    assert movie.truth.max() == pytest.approx(8.8e-3, rel=0.08)
    # residual noise: Poisson (mean ~0.59) + read 0.25^2 + line 0.15^2
    resid = movie.noisy - (300 * movie.truth + 0.5)
    assert resid.var() == pytest.approx(0.68, rel=0.05)
    assert resid.mean(axis=2).std() == pytest.approx(0.165, rel=0.15)


def test_atom_profile_peak_and_width() -> None:
    img = render_atoms(np.array([[20.0, 20.0]]), 41, tail=0.048)
    assert img.max() == pytest.approx(8.3e-3, rel=1e-5)
    row = img[20]
    half = row >= row.max() / 2
    assert 1 <= half.sum() <= 3  # FWHM ~2.1 px
    # sub-pixel position is honoured: the centroid of a shifted atom
    img2 = render_atoms(np.array([[20.3, 19.6]]), 41)
    yy, xx = np.mgrid[:41, :41]
    assert (img2 * xx).sum() / img2.sum() == pytest.approx(20.3, abs=1e-3)
    assert (img2 * yy).sum() / img2.sum() == pytest.approx(19.6, abs=1e-3)


def test_motion_rules(movie: Movie) -> None:
    p = movie.positions.astype(float)
    single = p[:, movie.groups == -1]
    step = np.hypot(*np.diff(single, axis=0).transpose(2, 0, 1))
    assert 0.3 < np.median(step) < 0.6  # dev-D: 0.45 px
    # clusters keep their shape (rigid rotation + 0.1 px thermal jitter)
    c1 = p[:, movie.groups == 1]
    d0 = np.hypot(*(c1[0, :, None] - c1[0, None]).transpose(2, 0, 1))
    d_last = np.hypot(*(c1[-1, :, None] - c1[-1, None]).transpose(2, 0, 1))
    assert np.abs(d0 - d_last).max() < 1.0
    # ... and turn: the orientation changes by 0.3-0.8 deg per frame
    v0 = c1[0] - c1[0].mean(0)
    v1 = c1[-1] - c1[-1].mean(0)
    ang = np.degrees(np.arctan2(v0[:, 0] * v1[:, 1] - v0[:, 1] * v1[:, 0], (v0 * v1).sum(1)))
    assert 0.3 * 47 * 0.7 < abs(np.median(ang)) < 0.8 * 47 * 1.3
    # no two atoms closer than a second-layer atom to its neighbours (4 px), minus jitter
    for t in range(p.shape[0]):
        d = np.hypot(*(p[t, :, None] - p[t, None]).transpose(2, 0, 1)) + 99 * np.eye(p.shape[1])
        assert d.min() > 3.0


def test_hops_happen() -> None:
    m = simulate_movie(SimConfig(frames=48, hop_prob=0.2, seed=2))
    single = m.positions[:, m.groups == -1].astype(float)
    step = np.hypot(*np.diff(single, axis=0).transpose(2, 0, 1))
    assert (step > 2.5).sum() > 20


def test_gradient_raises_the_right_side() -> None:
    flat = simulate_movie(SimConfig(size=64, frames=2, gradient=0.0, seed=4))
    ramp = simulate_movie(SimConfig(size=64, frames=2, gradient=1.0, seed=4))
    ratio = np.median(ramp.truth[:, :, -8:]) / np.median(flat.truth[:, :, -8:])
    assert ratio == pytest.approx(1.94, rel=0.1)
    assert np.median(ramp.truth[:, :, :8]) == pytest.approx(np.median(flat.truth[:, :, :8]), rel=0.1)


def test_dose_scales_counts() -> None:
    lo = simulate_movie(SimConfig(size=64, frames=4, dose=30, seed=5))
    hi = simulate_movie(SimConfig(size=64, frames=4, dose=3000, seed=5))
    assert np.array_equal(lo.truth, hi.truth)
    assert hi.noisy.mean() == pytest.approx(3000 * hi.truth.mean() + 0.5, rel=0.02)
    assert lo.noisy.mean() == pytest.approx(30 * lo.truth.mean() + 0.5, abs=0.02)


def test_large_frames_scale_the_scene() -> None:
    t0 = time.perf_counter()
    m = simulate_movie(SimConfig(size=512, frames=2))
    assert time.perf_counter() - t0 < 2.0
    assert m.noisy.shape == (2, 512, 512)
    assert m.positions.shape[1] == 16 * 27  # counts are per 128 x 128 pixels


def test_integer_streams_clip_instead_of_wrapping() -> None:
    frames = list(itertools.islice(stream_frames(SimConfig(size=64, frames=3), "<u2"), 6))
    assert all(f.dtype == np.uint16 and f.shape == (64, 64) for f in frames)
    assert max(int(f.max()) for f in frames) < 100  # no -1 wrapped to 65535
    assert as_dtype(np.array([-1.2, 2.6]), "<u2").tolist() == [0, 3]
    assert as_dtype(np.array([-1.2]), "<f4").dtype == np.float32


def test_metadata_schema(movie: Movie) -> None:
    meta = movie_metadata(movie, SimConfig(seed=1), name="x")
    assert meta["group_id"] == movie.groups.tolist()
    assert np.asarray(meta["frames"]).shape == (48, 27, 2)
    assert meta["pixel_size_A"] == 0.4 and meta["config"]["clusters"] == [5, 12]
