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


# ---------------------------------------------------------------------------- dense samples (issue 19)

from livedenoise.sim import DenseConfig, DenseMovie, dense_metadata, simulate_dense  # noqa: E402


def _support_of(m: DenseMovie, cfg: DenseConfig) -> np.ndarray:
    """truth - the columns' rendering, frame by frame: the static support if the truth is honest."""
    peaks = m.weights * cfg.atom_peak
    return np.stack([
        m.truth[t] - render_atoms(m.positions[t], cfg.size, cfg.atom_sigma, peaks, cfg.atom_tail, cfg.atom_tail_sigma)
        for t in range(cfg.frames)
    ])


@pytest.mark.parametrize("kind", ["mos2", "particle"])
def test_dense_deterministic_per_seed(kind: str) -> None:
    cfg = DenseConfig(kind=kind, size=96, frames=3, seed=5)
    a, b = simulate_dense(cfg), simulate_dense(cfg)
    assert np.array_equal(a.noisy, b.noisy) and np.array_equal(a.truth, b.truth)
    assert np.array_equal(a.positions, b.positions) and np.array_equal(a.weights, b.weights)
    c = simulate_dense(DenseConfig(kind=kind, size=96, frames=3, seed=6))
    assert not np.array_equal(a.truth, c.truth)


@pytest.mark.parametrize("kind", ["mos2", "particle"])
def test_dense_truth_is_the_columns_plus_a_static_support(kind: str) -> None:
    cfg = DenseConfig(kind=kind, size=96, frames=4, seed=2, background=3e-5, drift=0.3, rotation=0.5)
    m = simulate_dense(cfg)
    k = m.positions.shape[1]
    assert m.positions.shape == (4, k, 2) and m.groups.shape == m.weights.shape == (k,) and len(m.sites) == k
    support = _support_of(m, cfg)
    for t in range(1, cfg.frames):  # the columns move, the rest of the image does not
        np.testing.assert_allclose(support[t], support[0], rtol=0, atol=1e-7)
    assert support.mean() == pytest.approx(cfg.background, rel=0.05)
    assert support.min() >= -1e-7
    # the noise model: counts ~ dose x truth + pedestal
    assert m.noisy.mean() == pytest.approx(m.dose * m.truth.mean() + cfg.pedestal, rel=0.02)


def test_mos2_column_density_matches_the_lattice() -> None:
    """2 columns per (sqrt(3)/2) a^2 cell, less the Mo vacancies and the S2 sites with both S missing."""
    cfg = DenseConfig(size=384, frames=1, hole=0.0, seed=3)
    m = simulate_dense(cfg)
    a = cfg.mos2_a_A / 0.4
    cells = cfg.size**2 / (np.sqrt(3) / 2 * a * a)
    expected = cells * ((1 - cfg.mo_vacancy) + (1 - cfg.s_vacancy**2))
    assert (m.groups >= 0).sum() == pytest.approx(expected, rel=0.01)
    # Mo-S2 nearest-neighbour distance a / sqrt(3) (1.82 A)
    p = m.positions[0, m.groups >= 0].astype(float)
    mo = p[np.array(m.sites)[m.groups >= 0] == "Mo"][:50]
    d = np.hypot(*(mo[:, None] - p[None]).transpose(2, 0, 1))
    d[d < 1e-6] = np.inf
    assert np.median(d.min(axis=1)) == pytest.approx(a / np.sqrt(3), abs=0.3)
    # a hole takes about the stated fraction of the field
    holed = simulate_dense(DenseConfig(size=384, frames=1, hole=0.2, seed=3))
    assert (holed.groups >= 0).sum() / expected == pytest.approx(0.8, abs=0.05)


def test_mos2_defects_and_adatoms_in_the_stated_fractions() -> None:
    cfg = DenseConfig(size=512, frames=1, hole=0.0, seed=4)
    m = simulate_dense(cfg)
    sites = np.array(m.sites)
    w_s, w_se = (16 / 78) ** 1.7, (34 / 78) ** 1.7
    assert m.weights[sites == "Mo"] == pytest.approx((42 / 78) ** 1.7)
    assert np.all(m.weights > 0)  # an empty site is not listed
    # decode every S2 column's weight into its number of S and Se atoms (all five sums differ)
    combos = [(s, e) for s in range(3) for e in range(3) if 0 < s + e <= 2]
    table = np.array([s * w_s + e * w_se for s, e in combos])
    ws = m.weights[sites == "S2"]
    which = np.abs(ws[:, None] - table[None]).argmin(axis=1)
    assert np.abs(ws - table[which]).max() < 1e-9
    n_s, n_se = np.array(combos)[which].T
    n_vac = 2 - n_s - n_se
    p, q = cfg.s_vacancy, cfg.se_substitution
    n_col = ws.size
    # conditional on the column being listed (not both S missing)
    f_vac = n_vac.sum() / (2 * n_col)
    f_se = n_se.sum() / (2 * n_col)
    assert f_vac == pytest.approx(p / (1 + p), abs=4 * np.sqrt(p / (2 * n_col)))
    assert f_se == pytest.approx(q / (1 - p * p), abs=4 * np.sqrt(q / (2 * n_col)))
    # groups agree with the content: 1 = holds Se, 2 = one S missing (no Se), 0 = S2
    g = m.groups[sites == "S2"]
    assert np.array_equal(g == 1, n_se > 0)
    assert np.array_equal(g == 2, (n_se == 0) & (n_vac == 1))
    # Mo vacancies: Mo columns against S2 sites (the two sublattices hold as many sites)
    n_s2_sites = n_col / (1 - p * p)
    f_mo = 1 - (sites == "Mo").sum() / n_s2_sites
    assert f_mo == pytest.approx(cfg.mo_vacancy, abs=3 * np.sqrt(cfg.mo_vacancy / n_s2_sites) + 0.002)
    # adatoms: as many as configured per 256^2 pixels, Pt (2.9 x Mo), in hollow sites
    ad = m.groups == -1
    assert ad.sum() == round(cfg.adatoms * (cfg.size / 256) ** 2)
    assert np.all(sites[ad] == "Pt") and m.weights[ad] / m.weights[sites == "Mo"][0] == pytest.approx(2.87, abs=0.02)
    lat = m.positions[0, ~ad].astype(float)
    d = np.hypot(*(m.positions[0, ad][:, None] - lat[None]).transpose(2, 0, 1)).min(axis=1)
    a = cfg.mos2_a_A / 0.4
    assert np.all(d > 0.5 * a / np.sqrt(3))  # hollow site: a / sqrt(3) from Mo and S2, minus jitter


def test_mos2_adatoms_move_and_hop_the_lattice_does_not() -> None:
    cfg = DenseConfig(size=128, frames=48, hop_prob=0.2, adatoms=24, seed=7)
    m = simulate_dense(cfg)
    p = m.positions.astype(float)
    lat, ad = p[:, m.groups >= 0], p[:, m.groups == -1]
    dev = lat - lat.mean(axis=0)
    assert dev.std() == pytest.approx(cfg.thermal, rel=0.1)
    assert np.abs(dev).max() < 6 * cfg.thermal
    step = np.hypot(*np.diff(ad, axis=0).transpose(2, 0, 1))
    lat_step = np.hypot(*np.diff(lat, axis=0).transpose(2, 0, 1))
    assert np.median(step) > 2 * np.median(lat_step)
    hops = step[step > 2.5]
    a = cfg.mos2_a_A / 0.4
    assert hops.size > 20  # 24 adatoms x 47 steps x 20 %, less the refused (occupied / outside) ones
    assert np.median(hops) == pytest.approx(a, abs=1.0)  # to a neighbouring hollow site


@pytest.mark.parametrize("kind", ["mos2", "particle"])
def test_dense_default_dose_puts_the_brightest_columns_at_peak_counts(kind: str) -> None:
    cfg = DenseConfig(kind=kind, size=192, frames=1, seed=1)
    m = simulate_dense(cfg)
    support = _support_of(m, cfg)[0]
    # the brightest pristine columns: Mo, or the thickest columns of the particle
    pristine = m.groups == 0
    ref = m.weights[pristine].max()
    bright = np.flatnonzero(pristine & (m.weights >= 0.95 * ref))
    if kind == "mos2":
        assert ref == pytest.approx((42 / 78) ** 1.7) and {m.sites[k] for k in bright} == {"Mo"}
    above = m.dose * (m.truth[0] - support)
    peaks = []
    for k in bright:
        x, y = np.rint(m.positions[0, k]).astype(int)
        peaks.append(above[max(y - 1, 0): y + 2, max(x - 1, 0): x + 2].max())
    # pixel sampling of an off-centre column lowers the peak a little
    assert 0.85 * cfg.peak_counts < np.median(peaks) <= cfg.peak_counts
    assert np.max(peaks) < 1.05 * cfg.peak_counts
    background = m.dose * np.median(support) + cfg.pedestal
    assert cfg.pedestal <= background < cfg.pedestal + 0.1


@pytest.mark.parametrize("zone, spacing", [("100", 0.5), ("110", np.sqrt(6) / 4)])
def test_particle_projection_and_thickness(zone: str, spacing: float) -> None:
    cfg = DenseConfig(kind="particle", zone=zone, size=192, frames=2, thermal=0.0, seed=8)
    m = simulate_dense(cfg)
    assert m.zone == zone
    lat = m.groups >= 0
    p = m.positions[0, lat].astype(float)
    d = np.hypot(*(p[:, None] - p[None]).transpose(2, 0, 1)) + 1e9 * np.eye(len(p))
    assert np.median(d.min(axis=1)) == pytest.approx(spacing * cfg.fcc_a_A / 0.4, abs=0.01)
    # columns are thicker (brighter) through the middle of the particle than at its rim
    r = np.hypot(*(p - p.mean(axis=0)).T)
    w = m.weights[lat]
    inner, outer = w[r < np.quantile(r, 0.25)], w[r > np.quantile(r, 0.75)]
    assert inner.mean() > 1.5 * outer.mean()
    # the diameter drawn is within the configured range
    assert 2 * r.max() * 0.4 / 10 == pytest.approx(np.mean(cfg.diameter_nm), abs=0.5 * np.ptp(cfg.diameter_nm) + 0.2)


def test_particle_drifts_slowly_or_stays_still_and_adatoms_stay_off_it() -> None:
    still = simulate_dense(DenseConfig(kind="particle", size=192, frames=6, drift=0.0, rotation=0.0, thermal=0.0))
    lat = still.groups >= 0
    assert np.array_equal(still.positions[0, lat], still.positions[-1, lat])
    cfg = DenseConfig(kind="particle", size=192, frames=40, drift=0.05, rotation=0.0, thermal=0.0)
    moving = simulate_dense(cfg)
    lat = moving.groups >= 0
    shift = moving.positions[-1, lat].mean(axis=0) - moving.positions[0, lat].mean(axis=0)
    assert np.hypot(*shift) == pytest.approx(cfg.drift * (cfg.frames - 1), rel=1e-3)
    ad = moving.positions[:, ~lat].astype(float)
    assert ad.shape[1] == round(cfg.adatoms * (cfg.size / 256) ** 2)
    for t in (0, cfg.frames - 1):
        d = np.hypot(*(ad[t][:, None] - moving.positions[t, lat][None]).transpose(2, 0, 1))
        assert d.min() > 3.0


def test_dense_metadata_schema() -> None:
    cfg = DenseConfig(kind="particle", size=96, frames=2, seed=1)
    m = simulate_dense(cfg)
    meta = dense_metadata(m, cfg, name="x")
    k = m.positions.shape[1]
    assert np.asarray(meta["frames"]).shape == (2, k, 2)
    assert meta["group_id"] == m.groups.tolist() and len(meta["weights"]) == len(meta["site"]) == k
    assert meta["pixel_size_A"] == 0.4 and meta["kind"] == "particle" and meta["zone"] in ("100", "110")
    assert meta["dose_e_per_px"] == m.dose and meta["config"]["diameter_nm"] == list(cfg.diameter_nm)
    assert isinstance(m, Movie)


def test_render_atoms_takes_one_peak_per_atom() -> None:
    pos = np.array([[10.0, 10.0], [30.0, 20.0]])
    both = render_atoms(pos, 41, peak=np.array([1e-3, 4e-3]))
    assert both[10, 10] == pytest.approx(1e-3, rel=1e-5) and both[20, 30] == pytest.approx(4e-3, rel=1e-5)
    assert np.array_equal(render_atoms(pos, 41, peak=2e-3), render_atoms(pos, 41, peak=np.array([2e-3])))
    with pytest.raises(ValueError, match="one per atom"):
        render_atoms(pos, 41, peak=np.ones(3))
