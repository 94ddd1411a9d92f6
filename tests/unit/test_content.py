"""What a movie's clean images hold (livedenoise.analysis.estimate_content), measured on simulated
movies whose truth is known: the sparse movies, and the dense lattices and particles."""

from __future__ import annotations

import json

import numpy as np
import pytest

from livedenoise.analysis import SampleContent, estimate_content
from livedenoise.sim import DenseConfig, SimConfig, simulate_dense, simulate_movie


@pytest.fixture(scope="module")
def sparse():
    return simulate_movie(SimConfig(size=128, frames=40, dose=300, seed=3))


@pytest.fixture(scope="module")
def mos2():
    return simulate_dense(DenseConfig(kind="mos2", size=192, frames=32, seed=4, hole=0.0))


def _true_density(movie, border: int = 3) -> float:
    h, w = movie.noisy.shape[1:]
    xy = movie.positions[0]
    inside = np.all((xy >= border) & (xy < np.array([w, h]) - border), axis=1)
    return inside.sum() / ((h - 2 * border) * (w - 2 * border))


def test_sparse_movie_density_width_and_no_lattice(sparse):
    c = estimate_content(sparse.noisy, pixel_size_nm=0.04)
    assert c.reliable and not c.lattice and c.basis == ()
    assert c.density_px == pytest.approx(_true_density(sparse), rel=0.35)
    assert c.density_nm2 == pytest.approx(c.density_px / 0.04**2)
    # the profile's sigma is 0.875 px; jitter over the averaged frames widens it a little
    assert 0.8 < c.width_px < 1.3
    # peaks: a single atom's 8.3e-3 of the beam at dose 300, about 2.5 counts, clusters brighter
    assert 1.0 < c.peak_counts < 4.0 and c.background_counts == pytest.approx(0.57, abs=0.15)


def test_mos2_lattice_cell_motif_and_density(mos2):
    c = estimate_content(mos2.noisy, pixel_size_nm=0.04)
    assert c.reliable and c.lattice
    a = 3.16 / 0.4  # px
    lengths = np.hypot(*np.asarray(c.basis).T)
    assert lengths == pytest.approx([a, a], rel=0.02)
    cos = abs(np.dot(*np.asarray(c.basis))) / lengths.prod()
    assert cos == pytest.approx(0.5, abs=0.03)  # a hexagonal cell: 60 or 120 degrees
    # two sites per cell, Mo and S2: S2 is 0.39 of Mo
    assert len(c.motif) == 2
    dim, bright = sorted(m[2] for m in c.motif)
    assert dim / bright == pytest.approx(0.39, abs=0.12)
    assert c.density_px == pytest.approx(_true_density(mos2), rel=0.2)
    assert c.spacing_px == pytest.approx(a, rel=0.02)


def test_particle_lattice_is_found_with_its_column_spacing():
    movie = simulate_dense(DenseConfig(kind="particle", size=192, frames=32, seed=2, zone="100"))
    c = estimate_content(movie.noisy, pixel_size_nm=0.04)
    assert c.reliable and c.lattice
    # [100] projection of fcc: a square of a/2 = 2.04 A = 5.1 px
    assert np.hypot(*np.asarray(c.basis).T) == pytest.approx([5.1, 5.1], rel=0.04)


def test_one_image_is_estimated_without_frame_differences(mos2):
    image = mos2.noisy[:16].mean(axis=0)
    c = estimate_content(image)
    assert c.frames == 1 and c.lattice and c.reliable
    assert c.density_nm2 is None


@pytest.mark.parametrize(
    "frames, note",
    [
        (np.zeros((8, 64, 64), np.float32), "constant"),
        (np.ones((3, 8, 8), np.float32), "too small"),
    ],
)
def test_degenerate_frames_give_an_unreliable_estimate_not_an_error(frames, note):
    c = estimate_content(frames)
    assert not c.reliable and note in c.note


def test_too_little_signal_is_not_reliable():
    movie = simulate_movie(SimConfig(size=128, frames=4, dose=3, seed=1))
    c = estimate_content(movie.noisy)
    assert not c.reliable and c.note


def test_round_trip_through_json(mos2):
    c = estimate_content(mos2.noisy[:8], pixel_size_nm=0.04)
    back = SampleContent.from_dict(json.loads(json.dumps(c.to_dict())))
    assert back.lattice == c.lattice and back.density_px == c.density_px
    assert np.allclose(back.basis, c.basis, atol=1e-3) and len(back.motif) == len(c.motif)
    assert "atoms/nm²" in back.describe()
    # a card written by a later version with more fields still reads
    assert SampleContent.from_dict(c.to_dict() | {"future": 1}).peaks == c.peaks


def test_wrong_shape_is_a_value_error():
    with pytest.raises(ValueError, match="shape"):
        estimate_content(np.zeros((2, 3, 64, 64)))
