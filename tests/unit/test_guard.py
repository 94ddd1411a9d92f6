"""The guard's figures (issues 19 and 24): compare_content's verdict on content estimates of real
simulated movies, guard_report's one verdict with the measured fit, and the unexplained signal of a
denoised frame against its raw frame."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from livedenoise.analysis import (
    NO_EXPECTS,
    GuardVerdict,
    SampleContent,
    compare_content,
    estimate_content,
    guard_report,
    measure_fit,
    read_noise_of,
    unexplained,
    unexplained_sum,
)
from livedenoise.analysis._guard import COUNTS_FACTOR, DENSITY_FACTOR, WIDTH_FACTOR
from livedenoise.sim import SimConfig, render_atoms, simulate_movie

PIXEL_NM = 0.04  # the simulator's 0.4 Å/px


def hexagonal(size: int, spacing: float, margin: float = 3.0) -> np.ndarray:
    """``[x, y]`` sites of a hexagonal lattice of ``spacing`` px covering a ``size``² frame."""
    n = int(size / spacing) + 4
    i, j = np.meshgrid(np.arange(-n, n), np.arange(-n, n))
    x = (i + 0.5 * j).ravel() * spacing
    y = j.ravel() * spacing * math.sqrt(3) / 2
    keep = (x >= margin) & (x < size - margin) & (y >= margin) & (y < size - margin)
    return np.stack([x[keep], y[keep]], axis=1)


def dense_movie(size: int = 128, frames: int = 32, spacing: float = 7.0, dose: float = 300.0, seed: int = 0):
    """A lattice of atoms at the simulator's dose and background (beam fraction x dose + pedestal), Poisson counts."""
    truth = 2.4e-4 + render_atoms(hexagonal(size, spacing), size)
    rng = np.random.default_rng(seed)
    return rng.poisson(dose * truth + 0.5, (frames, size, size)).astype(np.float32), truth


@pytest.fixture(scope="module")
def sparse() -> SampleContent:
    movie = simulate_movie(SimConfig(size=128, frames=32, seed=11))
    return estimate_content(movie.noisy, PIXEL_NM)


def test_a_sparse_stream_fits_a_model_trained_on_sparse_atoms(sparse):
    other = estimate_content(simulate_movie(SimConfig(size=128, frames=32, seed=12, dose=150)).noisy, PIXEL_NM)
    assert sparse.reliable and other.reliable
    verdict = compare_content(sparse, other, pixel_size_nm=PIXEL_NM)
    assert verdict.fits is True and verdict.state == "fits" and verdict.reasons == ()
    assert 1 / DENSITY_FACTOR < verdict.density_ratio < DENSITY_FACTOR
    assert "fits" in verdict.message


def test_a_lattice_does_not_fit_a_model_trained_on_sparse_atoms(sparse):
    frames, _ = dense_movie()
    dense = estimate_content(frames, PIXEL_NM)
    assert dense.reliable and dense.lattice
    verdict = compare_content(sparse, dense, pixel_size_nm=PIXEL_NM)
    assert verdict.fits is False and verdict.state == "does not fit"
    assert "density" in verdict.reasons and "lattice" in verdict.reasons and verdict.lattice_mismatch
    assert verdict.density_ratio > DENSITY_FACTOR
    expected = f"this model expects about {sparse.density_nm2:.3g} atoms per nm²; this stream shows {dense.density_nm2:.3g}"
    assert verdict.message.startswith(expected)
    spacing_a = 10 * dense.spacing_px * PIXEL_NM
    assert f"on a lattice with {spacing_a:.2g} Å spacing" in verdict.message
    assert verdict.message.endswith("train on it (livedenoise train)")
    # the reverse: a model trained on the lattice, shown sparse atoms
    back = compare_content(dense, sparse, pixel_size_nm=PIXEL_NM)
    assert back.fits is False and "lattice" in back.reasons and back.density_ratio < 1 / DENSITY_FACTOR


def test_without_pixel_sizes_densities_are_per_100_px2(sparse):
    frames, _ = dense_movie()
    plain = dataclasses.replace(sparse, density_nm2=None)
    verdict = compare_content(plain, estimate_content(frames))
    assert verdict.fits is False
    assert f"about {100 * sparse.density_px:.3g} atoms per 100 px²" in verdict.message
    assert "px spacing" in verdict.message  # no pixel size: the lattice's period in px


@pytest.mark.parametrize(
    ("field", "factor", "reason"), [("width_px", WIDTH_FACTOR, "width"), ("peak_counts", COUNTS_FACTOR, "counts")]
)
def test_width_and_counts_far_from_training_are_reasons(sparse, field, factor, reason):
    for scale in (1.1 * factor, 1 / (1.1 * factor)):
        seen = dataclasses.replace(sparse, **{field: getattr(sparse, field) * scale})
        verdict = compare_content(sparse, seen)
        assert verdict.fits is False and verdict.reasons == (reason,), verdict
        assert "does not look like its training data" in verdict.message
    within = dataclasses.replace(sparse, **{field: getattr(sparse, field) * 0.9 * factor})
    assert compare_content(sparse, within).fits is True


def test_an_unreliable_estimate_cannot_tell(sparse):
    blank = estimate_content(np.random.default_rng(0).poisson(0.5, (32, 128, 128)).astype(np.float32), PIXEL_NM)
    assert not blank.reliable
    verdict = compare_content(sparse, blank)
    assert verdict.fits is None and verdict.state == "unknown" and verdict.reasons == ()
    assert blank.note in verdict.message
    assert compare_content(dataclasses.replace(sparse, reliable=False, note="only 3 peaks found"), sparse).fits is None


def test_verdict_to_dict_is_the_stats_fields(sparse):
    fields = GuardVerdict(False, ("density",), "m", 3.14159, None, 1.0, False).to_dict()
    assert fields == {
        "guard": "does not fit", "guard_message": "m", "guard_reasons": ["density"], "guard_density_ratio": 3.142,
        "guard_width_ratio": None, "guard_counts_ratio": 1.0, "guard_lattice_mismatch": False,
    }
    restored = SampleContent.from_dict(sparse.to_dict())  # what the card stores comes back, and fits
    assert compare_content(restored, sparse).density_ratio == pytest.approx(1.0)


# --------------------------------------------------------------------------- unexplained


def test_guard_report_composes_the_content_verdict_and_the_measured_fit_into_one(sparse):
    """The one composition serve's guard, denoise and the benchmarks call: the card's figures against
    the stream's estimate, the fit measured on the model's frames, and the verdict they give."""
    frames, _ = dense_movie(frames=40)  # the raw frames as the model's output: the causal filters beat them
    card = sparse.to_dict()  # as the model card keeps it
    report = guard_report(card, frames, frames, pixel_size_nm=PIXEL_NM)
    expected = SampleContent.from_dict(card)
    assert report.expected == expected and report.seen == estimate_content(frames, PIXEL_NM)
    assert report.content == compare_content(expected, report.seen, pixel_size_nm=PIXEL_NM) and report.content.fits is False
    assert report.fit == measure_fit(frames, frames)
    assert report.state == report.fit.state == "does not fit"
    assert report.message == f"{report.fit.message}; {report.content.message}"  # measured, then why
    stats = report.to_dict()
    assert stats["guard"] == report.state and stats["guard_message"] == report.message
    assert stats["guard_reasons"] == list(report.content.reasons) and stats["score_frames"] == report.fit.frames

    fits = dataclasses.replace(report, fit=dataclasses.replace(report.fit, state="fits"))
    assert fits.message == fits.fit.message and fits.state == "fits"  # a model that fits needs no why

    content_only = guard_report(card, frames, pixel_size_nm=PIXEL_NM)  # nothing to measure
    assert content_only.fit is None and content_only.content == report.content
    assert (content_only.state, content_only.message) == ("does not fit", report.content.message)


def test_guard_report_without_the_cards_figures_measures_the_fit_alone():
    frames, _ = dense_movie(frames=12)
    report = guard_report(None, frames, frames)
    assert report.content is report.seen is report.expected is None and report.off_reason == NO_EXPECTS
    assert report.fit is not None and report.state == report.fit.state
    if report.state != "fits":
        assert report.message == f"{report.fit.message} ({NO_EXPECTS})"
    unreadable = guard_report({"density_px": "?"}, frames, frames)
    assert unreadable.content is None and "unreadable" in unreadable.off_reason
    off = guard_report(None, frames)
    assert (off.fit, off.state, off.message) == (None, "unknown", NO_EXPECTS)


def erase(cfg: SimConfig, truth: np.ndarray, positions: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``truth`` with the atoms not in ``keep`` taken out (the support stays)."""
    def atoms(p):
        return render_atoms(p, cfg.size, cfg.atom_sigma, cfg.atom_peak, cfg.atom_tail, cfg.atom_tail_sigma)

    return truth - atoms(positions) + atoms(positions[keep])


@pytest.mark.parametrize("dose", [300.0, 1000.0])
def test_unexplained_stays_near_zero_where_the_output_explains_the_frame_and_rises_with_erased_atoms(dose):
    cfg = SimConfig(size=128, frames=12, dose=dose, seed=5)
    movie = simulate_movie(cfg)
    n = movie.positions.shape[1]
    half = np.arange(n) % 2 == 0
    none = np.zeros(n, bool)
    truth_based, halved, blank = [], [], []
    for t in range(cfg.frames):
        raw, truth, pos = movie.noisy[t], movie.truth[t], movie.positions[t]
        truth_based.append(unexplained(raw, truth))
        halved.append(unexplained(raw, erase(cfg, truth, pos, half)))
        blank.append(unexplained(raw, erase(cfg, truth, pos, none)))

    def mean(items, field):
        return float(np.mean([getattr(u, field) for u in items]))

    # the atoms' counts in a frame, for scale: what erasing all of them leaves behind at most
    atom_counts = dose * float(render_atoms(movie.positions[0], cfg.size, cfg.atom_sigma, cfg.atom_peak,
                                            cfg.atom_tail, cfg.atom_tail_sigma).sum())
    assert mean(truth_based, "counts") < 0.05 * atom_counts
    assert mean(truth_based, "fraction") < 0.05
    assert mean(halved, "counts") > 4 * mean(truth_based, "counts") + 0.05 * atom_counts
    assert mean(blank, "counts") > 1.5 * mean(halved, "counts")
    assert mean(truth_based, "fraction") < mean(halved, "fraction") < mean(blank, "fraction") <= 1
    assert all(u.gain > 0 for u in truth_based)  # the affine map back to counts is found
    assert abs(mean(truth_based, "read_noise") - math.hypot(cfg.read_noise, cfg.line_noise)) < 0.15


def test_unexplained_on_a_lattice_the_denoiser_wiped_out():
    frames, truth = dense_movie(frames=4, dose=300.0)
    flat = np.full_like(truth, truth.mean())
    for raw in frames:
        kept, wiped = unexplained(raw, truth), unexplained(raw, flat)
        assert wiped.fraction > 0.5 > 0.05 > kept.fraction
        assert wiped.counts > 20 * max(kept.counts, 1.0)


def test_unexplained_refuses_frames_of_two_shapes_and_takes_any_dtype():
    raw = np.random.default_rng(1).poisson(2.0, (32, 32)).astype("<u2")
    with pytest.raises(ValueError, match="one 2-D shape"):
        unexplained(raw, np.zeros((32, 16), np.float32))
    u = unexplained(raw, np.zeros((32, 32), np.float32))  # a blank output: the frame is noise only
    assert u.gain == 0.0 and u.fraction in (0.0, 1.0) and math.isfinite(u.counts)
    assert unexplained(raw, np.zeros((32, 32)), read_noise=0.0).read_noise == 0.0


def test_read_noise_of_consecutive_frames_is_the_simulators():
    cfg = SimConfig(size=128, frames=6, seed=8)
    movie = simulate_movie(cfg)
    # read noise per pixel and the scan-line offset: both Gaussian, beside the Poisson counts
    assert read_noise_of(movie.noisy) == pytest.approx(math.hypot(cfg.read_noise, cfg.line_noise), abs=0.08)
    assert read_noise_of(movie.noisy[:1]) is None


def test_a_shipped_model_erasing_a_lattice_shows_in_the_sum_of_frames_not_in_one():
    """The motivating case: the shipped default model on a MoS2-like lattice at 5 counts a column.
    One frame holds too few counts to tell; the sum of 16 does, and the truth stays explained."""
    from livedenoise.engine import Engine, default_model_path
    from livedenoise.sim import DenseConfig, simulate_dense

    movie = simulate_dense(DenseConfig(kind="mos2", size=128, frames=16, seed=41))
    engine = Engine(default_model_path().with_name("default.onnx"), provider="cpu")
    out = np.stack(engine.infer(list(movie.noisy), [0] * 16).outputs)
    noise = read_noise_of(movie.noisy)
    model, truth = unexplained_sum(movie.noisy, out, read_noise=noise), unexplained_sum(movie.noisy, movie.truth)
    blank = unexplained_sum(movie.noisy, np.zeros_like(out), read_noise=noise)
    assert truth.fraction < 0.01 and truth.counts < 0.01 * blank.counts
    assert model.fraction > 0.2 and model.counts > 0.3 * blank.counts
    single = np.mean([unexplained(r, d, read_noise=noise).fraction for r, d in zip(movie.noisy, out)])
    assert single < model.fraction / 4  # what one frame can show
