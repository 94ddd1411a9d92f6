"""The shared detector noise (bit for bit the simulators' own) and the moving acquisition of issue 24:
drift measured back by phase correlation, the scene change where it was asked, the dose decay, the
edge check, the columns' positions carried into the field."""

from __future__ import annotations

import math

import numpy as np
import pytest

import livedenoise.sim._dense as dense_mod
import livedenoise.sim._movie as movie_mod
from livedenoise.sim import (
    DenseConfig,
    MotionConfig,
    NoiseConfig,
    SimConfig,
    acquire,
    acquire_moving,
    measure_shift,
    render_atoms,
    simulate_dense,
    simulate_movie,
)


def _reference_acquire(truth: np.ndarray, cfg: SimConfig, rng: np.random.Generator) -> np.ndarray:
    """The simulators' noise as it was before NoiseConfig (livedenoise.sim._movie._acquire, verbatim)."""
    counts = np.empty(truth.shape, np.float32)
    h, w = truth.shape[1:]
    for t in range(truth.shape[0]):
        lam = cfg.dose * truth[t].astype(np.float64) + cfg.pedestal
        if cfg.line_shift > 0:
            rows = np.flatnonzero(rng.random(h) < cfg.line_shift)
            for r, s in zip(rows, rng.choice([-1, 1], rows.size)):
                row = lam[r]
                lam[r] = np.concatenate([row[:1], row[:-1]]) if s > 0 else np.concatenate([row[1:], row[-1:]])
        c = rng.poisson(np.maximum(lam, 0.0)).astype(np.float32)
        if cfg.read_noise > 0:
            c += np.float32(cfg.read_noise) * rng.standard_normal((h, w), dtype=np.float32)
        if cfg.line_noise > 0:
            c += np.float32(cfg.line_noise) * rng.standard_normal((h, 1), dtype=np.float32)
        counts[t] = c
    return counts


@pytest.mark.parametrize(
    "cfg",
    [SimConfig(size=32, frames=3), SimConfig(size=24, frames=4, dose=37.5, pedestal=0.2, line_shift=0.4),
     SimConfig(size=16, frames=2, read_noise=0.0, line_noise=0.0, line_shift=0.0)],
)
def test_acquire_draws_what_the_simulators_drew(cfg: SimConfig) -> None:
    truth = np.random.default_rng(9).random((cfg.frames, cfg.size, cfg.size), dtype=np.float32) * 1e-2
    new = acquire(truth, cfg.noise(), np.random.default_rng(4))
    assert np.array_equal(new, _reference_acquire(truth, cfg, np.random.default_rng(4)))


@pytest.mark.parametrize("which", ["sparse", "mos2", "particle"])
def test_simulators_give_the_same_movies(which: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each simulator hands acquire() the truth and the generator in the state the old code did: the
    noise it returns is the old noise of the same truth from the same state."""
    module = movie_mod if which == "sparse" else dense_mod
    seen = {}

    def spy(truth: np.ndarray, noise: NoiseConfig, rng: np.random.Generator, dose_scale=None) -> np.ndarray:
        seen["state"], seen["noise"] = rng.bit_generator.state, noise
        return acquire(truth, noise, rng, dose_scale)

    monkeypatch.setattr(module, "acquire", spy)
    if which == "sparse":
        cfg = SimConfig(size=48, frames=3, seed=3, line_shift=0.2)
        movie, noise_cfg = simulate_movie(cfg), cfg
    else:
        dcfg = DenseConfig(kind=which, size=64, frames=2, seed=1)
        movie = simulate_dense(dcfg)
        noise_cfg = SimConfig(dose=movie.dose, pedestal=dcfg.pedestal, read_noise=dcfg.read_noise,
                              line_noise=dcfg.line_noise, line_shift=dcfg.line_shift)
    assert seen["noise"] == noise_cfg.noise()
    rng = np.random.default_rng()
    rng.bit_generator.state = seen["state"]
    assert np.array_equal(movie.noisy, _reference_acquire(movie.truth, noise_cfg, rng))


def test_noise_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="line_shift"):
        NoiseConfig(line_shift=1.5)
    with pytest.raises(ValueError, match=">= 0"):
        NoiseConfig(dose=-1.0)
    with pytest.raises(ValueError, match="frames, height, width"):
        acquire(np.zeros((8, 8)), NoiseConfig(), np.random.default_rng(0))


# ---------------------------------------------------------------------------- the moving acquisition


def _lattice(size: int = 260, a: float = 8.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A hexagonal lattice of atom profiles with random column weights (so a shift by a lattice vector
    is not the same picture) on a flat background: the image (contrast ~1) and the columns' [x, y]."""
    i, j = np.meshgrid(np.arange(-2, size // 6), np.arange(-2, size // 6), indexing="ij")
    xy = np.stack([a * (i + 0.5 * j), a * math.sqrt(3) / 2 * j], axis=-1).reshape(-1, 2) + 3.3
    xy = xy[(xy >= 0).all(1) & (xy < size).all(1)]
    weights = np.random.default_rng(seed).uniform(0.4, 1.0, len(xy))
    return render_atoms(xy, size, sigma=1.2, peak=weights).astype(np.float64) + 0.05, xy


def test_drift_is_measured_back_by_phase_correlation() -> None:
    image, _ = _lattice()
    motion = MotionConfig(frames=40, drift=0.23, direction=30.0, jitter=0.1, scene_change=25, jump=(30.0, -20.0), seed=2)
    m = acquire_moving(image, motion, NoiseConfig(dose=5.0))
    shifts = np.array([measure_shift(m.truth[t], m.truth[t + 1]) for t in range(motion.frames - 1)])
    pairs = [t for t in range(motion.frames - 1) if t + 1 != motion.scene_change]
    planned = -0.23 * np.array([math.cos(math.radians(30)), math.sin(math.radians(30))])  # the sample moves back
    assert np.abs(shifts[pairs].mean(axis=0) - planned).max() < 0.02  # px per frame
    # frame by frame, jitter included, the content moved as the field's offsets say
    assert np.abs(shifts[pairs] - (m.offsets[:-1] - m.offsets[1:])[pairs]).max() < 0.05
    assert np.hypot(*(m.offsets[1:] - m.offsets[:-1])[pairs].std(axis=0)) == pytest.approx(0.1 * 2, rel=0.35)


def test_turning_drift_and_fractional_crops_are_exact() -> None:
    # a band-limited periodic image: the bicubic crop against the exact Fourier shift
    n = 200
    k = np.fft.fftfreq(n)
    spec = np.fft.fft2(np.random.default_rng(1).random((n, n))) * np.exp(-(k[:, None] ** 2 + k[None, :] ** 2) / (2 * 0.04**2))
    image = np.fft.ifft2(spec).real
    motion = MotionConfig(frames=6, field=64, drift=0.3, direction=10.0, turn=20.0, jitter=0.0, start=(40.3, 51.7))
    m = acquire_moving(image, motion, NoiseConfig(dose=1.0, pedestal=0.0))
    for t in range(motion.frames):
        x, y = m.offsets[t]
        exact = np.fft.ifft2(spec * np.exp(2j * np.pi * (k[None, :] * x + k[:, None] * y))).real[:64, :64]
        assert np.abs(m.truth[t] - exact).max() < 2e-3 * np.ptp(image)
    steps = np.diff(m.offsets, axis=0)
    assert np.allclose(np.hypot(*steps.T), 0.3)
    assert np.allclose(np.degrees(np.arctan2(steps[:, 1], steps[:, 0])), 10.0 + 20.0 * np.arange(5))
    # whole-pixel offsets without jitter cut the image exactly
    whole = acquire_moving(image, MotionConfig(frames=2, field=32, drift=1.0, jitter=0.0, start=(5.0, 7.0)),
                           NoiseConfig(dose=1.0, pedestal=0.0))
    assert np.allclose(whole.truth[1], image[7:39, 6:38], atol=1e-6)


def test_scene_change_lands_on_the_frame_asked() -> None:
    image, _ = _lattice()
    motion = MotionConfig(frames=30, drift=0.2, jitter=0.1, scene_change=17, jump=(-35.0, 25.0), dose_decay=0.3, seed=5)
    m = acquire_moving(image, motion, NoiseConfig(dose=5.0))
    assert np.allclose(np.diff(m.offsets, axis=0)[16], (-35.0, 25.0), atol=0.2 + 6 * 0.1)
    signal = (m.truth - 0.5) / m.dose_scale[:, None, None]  # the contrast without the dose decay
    change = np.abs(np.diff(signal, axis=0)).mean(axis=(1, 2))
    assert int(np.argmax(change)) + 1 == 17
    assert change[16] > 5 * np.median(change)


def test_dose_decays_over_the_movie() -> None:
    flat = np.full((160, 160), 0.8)
    motion = MotionConfig(frames=60, drift=0.1, jitter=0.05, dose_decay=0.3, seed=1)
    noise = NoiseConfig(dose=5.0, pedestal=0.5)
    m = acquire_moving(flat, motion, noise)
    assert m.dose_scale[0] == 1.0 and m.dose_scale[-1] == pytest.approx(0.7)
    assert np.all(np.diff(m.dose_scale) < 0)
    np.testing.assert_allclose(m.truth, (5.0 * 0.8 * m.dose_scale + 0.5)[:, None, None] * np.ones((1, 128, 128)), rtol=1e-6)
    # the counts follow: 5 frames of 128^2 pixels average to within ~0.01 counts
    for frames in (slice(0, 5), slice(-5, None)):
        assert m.noisy[frames].mean() == pytest.approx(m.truth[frames].mean(), abs=0.03)
    assert m.noisy[-5:].mean() / m.noisy[:5].mean() == pytest.approx((4.0 * 0.7 ** (57 / 59) + 0.5) / (4.0 * 0.7 ** (2 / 59) + 0.5), abs=0.01)


def test_field_that_leaves_the_image_raises() -> None:
    image = np.ones((150, 150))
    with pytest.raises(ValueError, match="leaves the 150 x 150 image at frame"):
        acquire_moving(image, MotionConfig(frames=112, drift=0.3, jitter=0.1), NoiseConfig())  # 33 px of drift
    with pytest.raises(ValueError, match="leaves"):
        acquire_moving(image, MotionConfig(frames=4, drift=0.0, scene_change=2, jump=(30.0, 0.0)), NoiseConfig())
    with pytest.raises(ValueError, match="at frame 0"):
        acquire_moving(image, MotionConfig(frames=4, start=(0.2, 10.0)), NoiseConfig())
    with pytest.raises(ValueError, match="scene_change"):
        MotionConfig(frames=10, scene_change=10)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        acquire_moving(np.ones((3, 200, 200)), MotionConfig(frames=4), NoiseConfig())


def test_positions_follow_the_field_and_a_moving_scene() -> None:
    image, xy = _lattice(seed=3)
    motion = MotionConfig(frames=8, drift=0.3, direction=200.0, jitter=0.1, scene_change=5, jump=(20.0, 15.0), seed=4)
    scene = np.stack([image] * motion.frames)  # a (T, H, W) scene: each frame its own image
    m = acquire_moving(scene, motion, NoiseConfig(dose=5.0), positions=xy)
    again = acquire_moving(image, motion, NoiseConfig(dose=5.0), positions=np.broadcast_to(xy, (8, *xy.shape)))
    assert np.array_equal(m.noisy, again.noisy) and np.array_equal(m.positions, again.positions, equal_nan=True)
    p = m.positions
    inside = np.isfinite(p[..., 0])
    assert np.all(inside == np.isfinite(p[..., 1])) and inside.sum(axis=1).min() > 150
    np.testing.assert_allclose(p[inside], (xy[None] - m.offsets[:, None])[inside], atol=1e-4)
    # every column inside the field sits on a peak of the clean frame
    for t in (0, 5, 7):
        q = p[t][np.all((p[t] > 2) & (p[t] < 125), axis=1)]
        r, c = np.rint(q[:, 1]).astype(int), np.rint(q[:, 0]).astype(int)
        peak = m.truth[t][r, c]
        around = np.max([m.truth[t][r + dy, c + dx] for dy, dx in ((-2, 0), (2, 0), (0, -2), (0, 2))], axis=0)
        assert np.all(peak > around)
