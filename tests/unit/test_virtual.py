"""The virtual detector at stack speed: several detectors in one pass, stacks and single patterns
giving the same images, the scan bookkeeping (gaps, joins, shape changes) on whole batches, and
the series' pixel mask, against numpy's sums of the same simulated 4D-STEM patterns."""

from __future__ import annotations

import numpy as np
import pytest

from livedenoise.detectors import Annulus, Skip, VirtualDetector, VirtualImage, Weights, annular_mask
from livedenoise.errors import LivedenoiseError
from livedenoise.protocol import ImageFrame
from livedenoise.sim import simulate_4dstem

SCAN = (12, 10)
PER_SCAN = SCAN[0] * SCAN[1]


@pytest.fixture(scope="module")
def scan4d():
    return simulate_4dstem(SCAN, detector=32, frames=3, seed=7)


def reference(patterns: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return (patterns.astype(np.float64) * weights).sum(axis=(1, 2)).reshape(-1, *SCAN).astype("<f4")


def detectors(scan4d) -> tuple[list, list[np.ndarray]]:
    """HAADF-like and BF annuli and a weights mask, with their weights for the reference."""
    weights = np.linspace(0, 2, 32 * 32, dtype=np.float32).reshape(32, 32)
    dets = [Annulus(scan4d.inner, scan4d.outer, "adf"), Annulus(0, scan4d.bf_radius, "bf"), Weights(weights, "ramp")]
    refs = [
        annular_mask((32, 32), scan4d.centre, scan4d.inner, scan4d.outer),
        annular_mask((32, 32), scan4d.centre, 0, scan4d.bf_radius),
        weights,
    ]
    return dets, refs


def split(out: list) -> tuple[list[ImageFrame], list[VirtualImage], list[Skip]]:
    return (
        [m for m in out if type(m) is ImageFrame],
        [m for m in out if type(m) is VirtualImage],
        [m for m in out if type(m) is Skip],
    )


@pytest.mark.parametrize("blas", [False, True])
@pytest.mark.parametrize("feed", ["one stack", "stacks of 37", "one by one"])
def test_several_detectors_in_one_pass(scan4d, feed, blas):
    dets, refs = detectors(scan4d)
    vd = VirtualDetector(SCAN, detectors=dets, centre=scan4d.centre, blas=blas)
    patterns = scan4d.patterns
    out = vd.start(4)
    if feed == "one stack":
        out += vd.add_stack(4, 0, patterns)
    elif feed == "stacks of 37":
        for a in range(0, len(patterns), 37):
            out += vd.add_stack(4, a, patterns[a : a + 37])
    else:
        for i, p in enumerate(patterns):
            out += vd.add(4, i, p)
    out += vd.end(4)
    frames, virtual, skips = split(out)
    assert not skips
    assert [(f.series_id, f.image_id) for f in frames] == [(4, 0), (4, 1), (4, 2)]
    assert [(v.image_id, v.index, v.name) for v in virtual] == [(k, i, n) for k in range(3) for i, n in ((1, "bf"), (2, "ramp"))]
    np.testing.assert_array_equal(np.stack([f.data for f in frames]), reference(patterns, refs[0]))
    np.testing.assert_array_equal(np.stack([v.data for v in virtual if v.index == 1]), reference(patterns, refs[1]))
    np.testing.assert_allclose(np.stack([v.data for v in virtual if v.index == 2]), reference(patterns, refs[2]), rtol=1e-6)
    assert all(f.data.dtype.str == "<f4" and f.data.shape == SCAN for f in frames)


def test_decoding_into_the_stack_buffer(scan4d):
    """What a stack receiver does: decompress into stack_buffer(), hand that to add_stack()."""
    vd = VirtualDetector(SCAN, inner=scan4d.inner, outer=scan4d.outer, centre=scan4d.centre)
    vd.start(1)
    patterns = scan4d.patterns
    assert vd.stack_buffer(1, 50, (32, 32), patterns.dtype) is None  # weights not built before the first pattern
    out = vd.add_stack(1, 0, patterns[:10])
    for a in range(10, len(patterns), 50):
        n = min(50, len(patterns) - a)
        buf = vd.stack_buffer(1, n, (32, 32), patterns.dtype)
        assert buf is not None and buf.shape == (n, 32, 32) and buf.flags.c_contiguous
        buf[:] = patterns[a : a + n]
        out += vd.add_stack(1, a, buf)
    assert vd.stack_buffer(2, 5, (32, 32), patterns.dtype) is None  # another series
    ref = reference(patterns, annular_mask((32, 32), scan4d.centre, scan4d.inner, scan4d.outer))
    np.testing.assert_array_equal(np.stack([f.data for f in split(out)[0]]), ref)


def test_centre_found_from_the_first_stack(scan4d):
    vd = VirtualDetector(SCAN, detectors=[Annulus(scan4d.inner, scan4d.outer)])
    out = vd.start(1) + vd.add_stack(1, 0, scan4d.patterns[:5]) + vd.add_stack(1, 5, scan4d.patterns[5:])
    frames = split(out)[0]
    assert len(frames) == 3
    assert np.hypot(vd.centre_used[0] - scan4d.centre[0], vd.centre_used[1] - scan4d.centre[1]) < 0.5


def test_gaps_out_of_order_and_a_late_first_image(scan4d):
    vd = VirtualDetector(SCAN, inner=scan4d.inner, outer=scan4d.outer, centre=scan4d.centre)
    ids = np.arange(len(scan4d.patterns))
    keep = (ids >= 2) & ~np.isin(ids, [40, 41, PER_SCAN + 7])  # series from its start: images 0, 1 lost
    ids_sent = np.concatenate([ids[keep][:60], [30], ids[keep][60:]])  # and one out of order, dropped
    stack = scan4d.patterns[ids_sent]
    out = vd.start(1) + vd.add_stack(1, ids_sent, stack) + vd.end(1)
    frames, _, skips = split(out)
    gaps = [s for s in skips if s.kind == "gaps"]
    assert sum(s.count for s in gaps) == 4  # 0-1 missing, 40-41, 30 after 61, PER_SCAN + 7
    assert any("after" in s.reason and "dropped" in s.reason for s in gaps)
    assert len(frames) == 3
    ref = reference(scan4d.patterns, annular_mask((32, 32), scan4d.centre, scan4d.inner, scan4d.outer)).reshape(3, -1)
    have = np.setdiff1d(np.arange(PER_SCAN), [0, 1, 40, 41])
    np.testing.assert_array_equal(frames[0].data.reshape(-1)[have], ref[0][have])
    np.testing.assert_allclose(frames[0].data.reshape(-1)[[0, 1, 40, 41]], ref[0][have].mean(), rtol=1e-6)


def test_a_series_picked_up_midway_begins_at_its_next_scan(scan4d):
    """No start (header lost, or the receiver started late): the scan frame it came into is
    dropped, never emitted in part; the next ones are whole."""
    vd = VirtualDetector(SCAN, inner=scan4d.inner, outer=scan4d.outer, centre=scan4d.centre)
    first = PER_SCAN // 4  # a quarter into scan frame 0: three quarters would pass the gap rule
    out = vd.add_stack(8, first, scan4d.patterns[first:]) + vd.end(8)
    frames, _, skips = split(out)
    assert [f.image_id for f in frames] == [1, 2]
    assert [s.kind for s in skips] == ["incomplete"] and "picked up at scan frame 0" in skips[0].reason


def test_shape_change_drops_the_open_scan(scan4d):
    big = simulate_4dstem(SCAN, detector=48, frames=3, seed=8)
    vd = VirtualDetector(SCAN, inner=scan4d.inner, outer=scan4d.outer, centre=scan4d.centre)
    half = PER_SCAN + PER_SCAN // 2
    out = vd.start(1) + vd.add_stack(1, 0, scan4d.patterns[:half]) + vd.add_stack(1, half, big.patterns[half:]) + vd.end(1)
    frames, _, skips = split(out)
    assert [(f.image_id, f.data.shape) for f in frames] == [(0, SCAN), (2, SCAN)]
    assert [s.kind for s in skips] == ["incomplete"] and "changed shape" in skips[0].reason
    mask48 = annular_mask((48, 48), scan4d.centre, scan4d.inner, scan4d.outer)
    np.testing.assert_array_equal(frames[1].data, reference(big.patterns, mask48)[2])


def test_pixel_mask_and_flagged_pixels(scan4d):
    patterns = scan4d.patterns[:PER_SCAN].copy()
    ring = annular_mask((32, 32), scan4d.centre, scan4d.inner, scan4d.outer)
    rows, cols = np.nonzero(ring)
    hot, dead = (rows[0], cols[0]), (rows[5], cols[5])
    patterns[:, hot[0], hot[1]] = 5000  # a hot pixel the detector's mask knows
    patterns[:, dead[0], dead[1]] = np.iinfo(np.uint16).max  # flagged by the detector in the data
    bad = np.zeros((32, 32), np.uint32)
    bad[hot] = 8
    vd = VirtualDetector(SCAN, inner=scan4d.inner, outer=scan4d.outer, centre=scan4d.centre)
    frames, _, skips = split(vd.start(1, pixel_mask=bad) + vd.add_stack(1, 0, patterns))
    expected = ring.copy()
    expected[hot] = expected[dead] = False
    assert not skips
    np.testing.assert_array_equal(frames[0].data, reference(patterns, expected)[0])
    # the next series has a mask of another shape: refused once, counted; the flagged pixel still out
    out = vd.start(2, pixel_mask=np.zeros((16, 16), np.uint32)) + vd.add_stack(2, 0, patterns) + vd.add_stack(2, 0, patterns[:1])
    frames, _, skips = split(out)
    refused = [s for s in skips if s.kind == "malformed"]
    assert len(refused) == 1 and "pixel mask of 16x16 for frames of 32x32: refused" in refused[0].reason
    expected[hot] = True
    np.testing.assert_array_equal(frames[0].data, reference(patterns, expected)[0])


def test_weights_of_the_wrong_shape_are_malformed_patterns(scan4d):
    vd = VirtualDetector(SCAN, detectors=[Weights(np.ones((8, 8), np.float32), "small")])
    out = vd.add_stack(1, 0, scan4d.patterns[:7])
    assert [(s.kind, s.count) for s in out] == [("malformed", 7)] and "small is 8x8" in out[0].reason


def test_bad_configurations():
    with pytest.raises(LivedenoiseError, match="expected 0 <= INNER < OUTER"):
        Annulus(10, 4)
    with pytest.raises(LivedenoiseError, match="needs an annulus"):
        VirtualDetector(SCAN)
