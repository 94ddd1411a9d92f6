"""The ground-truth-free score, the classical causal filter and the noise model (issue 24), against
ground truth on simulated movies."""

from __future__ import annotations

import numpy as np
import pytest

from livedenoise.analysis import (
    CausalFilter,
    drift_per_frame,
    filter_grid,
    frame_terms,
    gaussian_blur,
    noise_model,
    paired_gain,
    scene_changes,
    score,
    summarise,
)


def _affine_mse(den: np.ndarray, truth: np.ndarray) -> np.ndarray:
    out = []
    for d, t in zip(den.astype(np.float64), truth.astype(np.float64)):
        a = np.stack([d.ravel(), np.ones(d.size)], 1)
        coef, *_ = np.linalg.lstsq(a, t.ravel(), rcond=None)
        out.append(np.mean((a @ coef - t.ravel()) ** 2))
    return np.array(out)


@pytest.fixture(scope="module")
def static_movie():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:96, :96]
    clean = 0.5 + 3.0 * (np.sin(xx / 3.1) * np.cos(yy / 2.3) > 0.3)  # a lattice-like pattern, counts
    truth = np.broadcast_to(clean, (40, 96, 96)).astype(np.float32)
    noisy = rng.poisson(truth).astype(np.float32) + 0.25 * rng.standard_normal(truth.shape, dtype=np.float32)
    noisy += 0.15 * rng.standard_normal((40, 96, 1), dtype=np.float32)  # line noise
    return noisy, truth


def test_gain_over_raw_matches_the_true_gain_on_a_static_movie(static_movie):
    noisy, truth = static_movie
    idx = np.arange(16, 38)
    raw_true = _affine_mse(noisy[idx], truth[idx]).mean()
    for flt in (CausalFilter(1, 1.0), CausalFilter(4, 0.0), CausalFilter(8, 0.75), CausalFilter(16, 0.0, 0.8)):
        den = flt.apply(noisy)
        true_gain = 10 * np.log10(raw_true / _affine_mse(den[idx], truth[idx]).mean())
        est = score(noisy, den, idx)
        assert est.frames == idx.size
        assert est.gain_db == pytest.approx(true_gain, abs=0.5), flt


def test_methods_apart_in_true_error_are_ordered_by_the_score(static_movie):
    noisy, truth = static_movie
    idx = np.arange(16, 38)
    raw = frame_terms(noisy, noisy, idx)
    rows = []
    for flt in (CausalFilter(1, 0.0), CausalFilter(2, 0.5), CausalFilter(6, 0.5), CausalFilter(16, 0.75)):
        den = flt.apply(noisy)
        rows.append((_affine_mse(den[idx], truth[idx]).mean(), summarise(frame_terms(noisy, den, idx), raw).umse))
    true, est = np.array(rows).T
    assert list(np.argsort(true)) == list(np.argsort(est))


def test_paired_gain_says_which_of_two_methods_is_better_with_an_error():
    rng = np.random.default_rng(3)
    truth = np.broadcast_to(rng.random((64, 64)) * 4, (60, 64, 64))
    noisy = rng.poisson(truth + 0.5).astype(np.float32)
    good, bad = CausalFilter(8, 0.0).apply(noisy), CausalFilter(1, 0.0).apply(noisy)
    idx = np.arange(8, 56)
    gain, se = paired_gain(frame_terms(noisy, good, idx), frame_terms(noisy, bad, idx))
    assert gain > 3 and 0 < se < gain / 3
    assert paired_gain(frame_terms(noisy, good, idx[:10]), frame_terms(noisy, bad, idx[:10]))[1] == np.inf  # < 3 blocks
    with pytest.raises(ValueError, match="same frames"):
        paired_gain(frame_terms(noisy, good, idx), frame_terms(noisy, bad, idx[1:]))


def test_score_refuses_frames_without_two_after_them():
    frames = np.zeros((5, 8, 8), np.float32)
    with pytest.raises(ValueError, match="two frames after"):
        frame_terms(frames, frames, np.array([3]))
    with pytest.raises(ValueError, match="one shape"):
        frame_terms(frames, frames[:, :4])
    assert summarise(frame_terms(frames, frames, np.arange(0)), frame_terms(frames, frames)).frames == 0


def test_the_filter_is_causal_and_its_grid_spans_windows_and_decays():
    rng = np.random.default_rng(0)
    frames = rng.random((10, 16, 16)).astype(np.float32)
    flt = CausalFilter(4, 1.0)
    full = flt.apply(frames)
    assert np.allclose(flt.apply(frames[:6])[5], full[5], atol=1e-6)  # frame 5 depends on frames <= 5 only
    assert np.allclose(flt.at(frames[:6]), full[5], atol=1e-6)
    assert CausalFilter(3, 0.0, 0.5).weights().tolist() == pytest.approx([1 / 7, 2 / 7, 4 / 7])
    grid = list(filter_grid())
    assert {f.window for f in grid} >= {1, 5, 16} and any(f.decay for f in grid)
    with pytest.raises(ValueError):
        CausalFilter(17)
    # the blur keeps a constant frame and reflects at the edges, also for a frame narrower than the kernel
    assert np.allclose(gaussian_blur(np.ones((3, 5, 4), np.float32), 3.0), 1.0)


def test_noise_model_finds_gain_offset_line_noise_and_shared_noise():
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[:128, :128]
    clean = 1.0 + 4.0 * np.exp(-((xx % 16 - 8) ** 2 + (yy % 16 - 8) ** 2) / 8.0)
    counts = rng.poisson(np.broadcast_to(clean, (24, 128, 128))).astype(np.float64)
    counts += 0.3 * rng.standard_normal((24, 128, 1))  # line noise
    analog = 37.0 * counts + 100.0  # an analog scan unit: gain and offset
    m = noise_model(analog)
    assert m.reliable and m.gain == pytest.approx(37.0, rel=0.1) and m.offset == pytest.approx(100.0, abs=15)
    assert np.sqrt(m.line) == pytest.approx(37 * 0.3, rel=0.2) and not m.shared
    assert "analog" in m.describe()
    averaged = 0.5 * (counts[1:] + counts[:-1])  # a vendor's running mean of two frames
    assert noise_model(averaged).shared and "shared" in noise_model(averaged).describe()
    assert not noise_model(np.ones((10, 32, 32))).reliable
    assert not noise_model(counts[:2]).reliable


def test_drift_and_scene_changes_are_measured_from_the_movie():
    rng = np.random.default_rng(4)
    big = gaussian_blur(rng.random((256, 256)).astype(np.float32), 2.0) * 40
    frames = []
    for t in range(40):
        dy, dx = 0.3 * t, 0.2 * t
        y0, x0 = int(dy), int(dx)
        fy, fx = dy - y0, dx - x0
        win = big[40 + y0 : 40 + y0 + 129, 40 + x0 : 40 + x0 + 129]
        shifted = ((1 - fy) * (1 - fx) * win[:-1, :-1] + fy * (1 - fx) * win[1:, :-1]
                   + (1 - fy) * fx * win[:-1, 1:] + fy * fx * win[1:, 1:])
        frames.append(rng.poisson(shifted + 1.0))
    frames = np.asarray(frames, np.float32)
    assert drift_per_frame(frames) == pytest.approx(np.hypot(0.3, 0.2), abs=0.03)
    assert scene_changes(frames) == []
    cut = frames.copy()
    cut[25:] = rng.poisson(np.broadcast_to(big[:128, 128:] + 1.0, (15, 128, 128)))
    assert scene_changes(cut) == [25]
