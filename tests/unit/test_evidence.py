"""Evidence per atom from the raw counts: the likelihood ratio against an independent computation,
the local background, real atoms against noise clusters, the width estimate, accumulation."""

from __future__ import annotations

import numpy as np
import pytest

from livedenoise.analysis import ATOM_SIGMA, TrackEvidence, accumulate_evidence, atom_evidence, find_atoms, link_frames
from livedenoise.analysis._evidence import estimate_sigma
from livedenoise.scoring._trackscore import roc_auc
from livedenoise.sim import SimConfig, render_atoms, simulate_movie


def _profile(size: int, xy: np.ndarray, peaks: np.ndarray, sigma: float = ATOM_SIGMA) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    out = np.zeros((size, size))
    for (x, y), a in zip(xy, peaks):
        out += a * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return out


def test_llr_is_the_poisson_likelihood_ratio_at_the_best_amplitude() -> None:
    """The vectorised Fisher scoring against scipy's Poisson log-pmf maximised numerically."""
    stats = pytest.importorskip("scipy.stats")
    optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(3)
    xy = rng.uniform(8, 56, (12, 2))
    xy = xy[np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1)).__add__(np.eye(len(xy)) * 99).min(1) > 9]
    peaks = rng.uniform(0.3, 4.0, len(xy))
    raw = rng.poisson(0.6 + _profile(64, xy, peaks)).astype(np.float32)
    ev = atom_evidence(raw, xy)
    rad = 2.5 * ATOM_SIGMA
    yy, xx = np.mgrid[:64, :64]
    for k, (x, y) in enumerate(xy):
        disk = np.hypot(yy - np.rint(y), xx - np.rint(x)) <= rad + 0.5
        c = raw[disk].astype(np.float64)
        g = np.exp(-((xx[disk] - x) ** 2 + (yy[disk] - y) ** 2) / (2 * ATOM_SIGMA**2))
        b = float(ev.background[k])

        def nll(a: float, c: np.ndarray = c, g: np.ndarray = g, b: float = b) -> float:
            return -float(stats.poisson.logpmf(c, b + a * g).sum())

        res = optimize.minimize_scalar(nll, bounds=(-0.95 * b / g.max(), 60.0), method="bounded",
                                       options={"xatol": 1e-9})
        llr = nll(0.0) - res.fun
        assert ev.llr[k] == pytest.approx(max(llr, 0.0), rel=1e-3, abs=1e-4)
        assert ev.amplitude[k] == pytest.approx(res.x, rel=1e-3, abs=1e-3)
        assert ev.z[k] == pytest.approx(np.sign(res.x) * np.sqrt(2 * max(llr, 0.0)), rel=1e-3, abs=1e-3)


def test_noise_free_frame_gives_back_amplitude_and_background() -> None:
    xy = np.array([[20.3, 20.6], [25.1, 20.2], [44.0, 40.0]])  # the first two 4.8 px apart
    peaks = np.array([2.5, 5.0, 1.0])
    raw = 0.6 + _profile(64, xy, peaks)
    ev = atom_evidence(raw, xy)
    # the neighbour's disk is left out of the background ring, so the background stays the support's
    assert ev.background == pytest.approx(0.6, abs=0.01)
    assert ev.amplitude[2] == pytest.approx(1.0, rel=1e-3)
    # without that, the ring of the first atom would see its bright neighbour
    yy, xx = np.mgrid[:64, :64]
    d = np.hypot(yy - 21, xx - 20)
    plain_ring = raw[(d >= 2.5 * ATOM_SIGMA + 1.5) & (d <= 2.5 * ATOM_SIGMA + 3.5)].mean()
    assert plain_ring > ev.background[0] + 0.1


def _noise_clusters(raw: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Clusters of bright noise pixels away from every atom, tallest first: the local maxima of the
    raw frame smoothed by the atom's own profile, what a denoiser could turn into an atom."""
    kernel = np.fft.ifftshift(render_atoms(np.array([[64.0, 64.0]]), 128, sigma=ATOM_SIGMA, peak=1.0))
    smooth = np.fft.ifft2(np.fft.fft2(raw) * np.fft.fft2(kernel)).real
    cand = find_atoms(smooth, threshold=-np.inf).positions
    far = np.hypot(*(cand[:, None] - true[None]).transpose(2, 0, 1)).min(axis=1) > 5
    inner = ((cand > 6) & (cand < 122)).all(axis=1)
    return cand[far & inner]


def test_real_atoms_outscore_noise_clusters_at_dose_300() -> None:
    movie = simulate_movie(SimConfig(frames=4, dose=300, seed=21))
    z_true, z_noise = [], []
    rng = np.random.default_rng(0)
    for raw, true in zip(movie.noisy, movie.positions):
        clusters = _noise_clusters(raw, true)
        pick = clusters[rng.choice(len(clusters), 30, replace=False)]
        ev = atom_evidence(raw, np.concatenate([true, pick]), read_noise=0.29)
        z_true.append(ev.z[: len(true)])
        z_noise.append(ev.z[len(true) :])
    zt, zn = np.concatenate(z_true), np.concatenate(z_noise)
    assert roc_auc(np.r_[zt, zn], np.r_[np.ones(zt.size, bool), np.zeros(zn.size, bool)]) > 0.9


def test_the_tallest_noise_clusters_are_unmasked_along_their_track() -> None:
    """The tallest noise clusters of a frame are supported by that frame's counts about as well as
    real atoms (the test cannot tell them apart there: that is the selection); a denoiser that keeps
    showing them in the next frames is caught by the evidence accumulated along their tracks."""
    movie = simulate_movie(SimConfig(frames=8, dose=300, seed=21, hop_prob=0.0))
    k = movie.positions.shape[1]
    invented = _noise_clusters(movie.noisy[0], movie.positions[0])[:10]
    pts = [np.concatenate([p, invented]) for p in movie.positions]
    ev = [atom_evidence(r, p, read_noise=0.29) for r, p in zip(movie.noisy, pts)]
    ids, _ = link_frames(pts)
    z_acc, _ = accumulate_evidence(ids, [e.z for e in ev], [e.llr for e in ev])
    label = np.r_[np.ones(k, bool), np.zeros(len(invented), bool)]
    first = roc_auc(ev[0].z, label)
    later = roc_auc(np.concatenate(z_acc[4:]), np.tile(label, 4))
    assert later > 0.9
    assert later > first + 0.1


def test_background_only_gives_z_near_standard_normal() -> None:
    rng = np.random.default_rng(5)
    raw = rng.poisson(0.6, (256, 256)).astype(np.float32)
    xy = np.stack(np.meshgrid(np.arange(10, 250, 12.0), np.arange(10, 250, 12.0)), -1).reshape(-1, 2)
    xy = xy + rng.uniform(-0.5, 0.5, xy.shape)
    z = atom_evidence(raw, xy).z
    assert abs(float(np.mean(z))) < 0.2
    assert 0.8 < float(np.std(z)) < 1.25


def test_edges_empty_and_non_finite_positions() -> None:
    rng = np.random.default_rng(1)
    raw = rng.poisson(0.6 + _profile(32, np.array([[0.2, 0.4]]), np.array([6.0])))
    ev = atom_evidence(raw, np.array([[0.2, 0.4], [-50.0, -50.0], [np.nan, 3.0], [31.0, 31.0]]))
    assert np.isfinite(ev.z[[0, 3]]).all() and np.isnan(ev.z[[1, 2]]).all()
    assert ev.z[0] > ev.z[3]
    assert len(atom_evidence(raw, np.zeros((0, 2)))) == 0
    assert ev.weak().tolist() == [False, True, True, True]
    with pytest.raises(ValueError):
        atom_evidence(raw[None], np.zeros((1, 2)))


def test_estimate_sigma_finds_the_simulated_width() -> None:
    movie = simulate_movie(SimConfig(frames=6, dose=300, seed=8, atom_tail=0.0, line_shift=0.0))
    s = estimate_sigma(list(movie.noisy), list(movie.positions), read_noise=0.29)
    assert s == pytest.approx(SimConfig().atom_sigma, abs=0.08)
    wide = simulate_movie(SimConfig(frames=6, dose=300, seed=8, atom_tail=0.0, line_shift=0.0, atom_sigma=1.3))
    assert estimate_sigma(list(wide.noisy), list(wide.positions), read_noise=0.29) == pytest.approx(1.3, abs=0.1)


def test_track_evidence_combines_z_and_adds_llr() -> None:
    acc = TrackEvidence(decay=1.0)
    z1, _, n1 = acc.update(np.array([5, 7, -1]), np.array([2.0, 1.0, 4.0]), np.array([2.0, 0.5, 8.0]))
    assert z1.tolist() == [2.0, 1.0, 4.0] and n1.tolist() == [1, 1, 1]
    z2, l2, n2 = acc.update(np.array([7, 9, 5]), np.array([1.0, 3.0, np.nan]), np.array([0.5, 4.5, np.nan]))
    assert z2 == pytest.approx([2 / np.sqrt(2), 3.0, 2.0])  # a NaN frame adds nothing
    assert l2 == pytest.approx([1.0, 4.5, 2.0]) and n2.tolist() == [2, 1, 1]
    acc.reset()
    assert len(acc) == 0
    decayed = TrackEvidence(decay=0.5)
    decayed.update(np.array([1]), np.array([4.0]), np.array([8.0]))
    zd, ld, _ = decayed.update(np.array([1]), np.array([0.0]), np.array([0.0]))
    assert zd[0] == pytest.approx(0.5 * 4.0 / np.sqrt(1 + 0.25)) and ld[0] == pytest.approx(4.0)
    with pytest.raises(ValueError):
        acc.update(np.array([1, 2]), np.array([1.0]), np.array([1.0]))


def test_accumulated_along_tracks_separates_better_at_low_dose() -> None:
    """At dose 100 one frame barely supports an atom; its track, followed over 24 frames, does."""
    movie = simulate_movie(SimConfig(frames=24, dose=100, seed=13))
    rng = np.random.default_rng(2)
    fixed = rng.uniform(12, 116, (60, 2))  # places a denoiser might invent atoms at, every frame
    fixed = fixed[np.hypot(*(fixed[:, None] - movie.positions[0][None]).transpose(2, 0, 1)).min(1) > 8]
    k = movie.positions.shape[1]
    pts = [np.concatenate([p, fixed]) for p in movie.positions]
    ids, _ = link_frames(pts, max_disp=7.0)
    ev = [atom_evidence(r, p, read_noise=0.29) for r, p in zip(movie.noisy, pts)]
    z_acc, _ = accumulate_evidence(ids, [e.z for e in ev], [e.llr for e in ev])
    label = np.r_[np.ones(k, bool), np.zeros(len(fixed), bool)]
    late = range(12, 24)
    auc_frame = roc_auc(np.concatenate([ev[t].z for t in late]), np.tile(label, len(late)))
    auc_track = roc_auc(np.concatenate([z_acc[t] for t in late]), np.tile(label, len(late)))
    assert auc_track > auc_frame + 0.05
    assert auc_track > 0.9
