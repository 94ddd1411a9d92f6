"""DECTRIS stream decoding (v1 part by part, v2 CBOR) and the virtual detector, on simulated
4D-STEM scans encoded with bitshuffle, LZ4 and cbor2 (the ``dectris`` extra)."""

from __future__ import annotations

import json
import struct
import sys

import numpy as np
import pytest

pytest.importorskip("bitshuffle")
pytest.importorskip("cbor2")
pytest.importorskip("lz4")

from livedenoise.detectors import (
    DectrisDecoder,
    Skip,
    VirtualDetector,
    annular_mask,
    decompress_bslz4,
    find_centre,
    load_codecs,
    read_mask,
)
from livedenoise.errors import LivedenoiseError, MalformedMessage
from livedenoise.protocol import ImageFrame, SeriesEnd, SeriesStart
from livedenoise.sim import dectris_v1_messages, dectris_v2_messages, encode_bslz4, simulate_4dstem

SCAN = (12, 10)


@pytest.fixture(scope="module")
def scan4d():
    return simulate_4dstem(SCAN, detector=32, frames=2, seed=5)


def virtual_reference(patterns: np.ndarray, weights: np.ndarray, scan: tuple[int, int]) -> np.ndarray:
    """numpy's virtual image of the same patterns: the weighted sum per pattern, one image per scan."""
    sums = (patterns.astype(np.float64) * weights).sum(axis=(1, 2))
    return sums.reshape(-1, *scan).astype("<f4")


def run(decoder: DectrisDecoder, messages) -> list:
    return [m for message in messages for m in decoder.feed(message)]


def frames_of(out: list) -> list[ImageFrame]:
    return [m for m in out if type(m) is ImageFrame]


def skips(out: list, kind: str) -> list[Skip]:
    return [m for m in out if type(m) is Skip and m.kind == kind]


@pytest.mark.parametrize("encoding", ["bs16-lz4<", "lz4<", "<"])
@pytest.mark.parametrize("grouping", ["as sent", "part by part", "one message"])
def test_v1_virtual_images_equal_numpy(scan4d, encoding, grouping):
    messages = dectris_v1_messages(scan4d.patterns, series=3, encoding=encoding)
    if grouping == "part by part":
        messages = [[part] for message in messages for part in message]
    elif grouping == "one message":
        messages = [[part for message in messages for part in message]]
    vd = VirtualDetector(SCAN, inner=scan4d.inner, outer=scan4d.outer)
    out = run(DectrisDecoder(virtual=vd), messages)
    assert [type(m) for m in out if type(m) is not ImageFrame] == [SeriesStart, SeriesEnd]
    frames = frames_of(out)
    mask = annular_mask((32, 32), vd.centre_used, scan4d.inner, scan4d.outer)
    ref = virtual_reference(scan4d.patterns, mask, SCAN)
    assert [(f.series_id, f.image_id) for f in frames] == [(3, 0), (3, 1)]
    for frame, expected in zip(frames, ref):
        assert frame.data.dtype.str == "<f4" and frame.data.shape == SCAN
        np.testing.assert_array_equal(frame.data, expected)
    # the centre found from the first patterns is the simulated beam's
    assert np.hypot(vd.centre_used[0] - scan4d.centre[0], vd.centre_used[1] - scan4d.centre[1]) < 0.5


def test_v1_pass_through_without_scan(scan4d):
    out = run(DectrisDecoder(), dectris_v1_messages(scan4d.patterns[:5], series=9))
    frames = frames_of(out)
    assert [f.image_id for f in frames] == list(range(5))
    for f, p in zip(frames, scan4d.patterns):
        assert f.data.dtype.str == "<u2"
        np.testing.assert_array_equal(f.data, p)


def test_bslz4_header_of_zeros_reads_default_blocks():
    """LiberTEM's mocked simulator writes 12 zero bytes before the blocks: size and block size unknown."""
    frame = np.arange(40 * 24, dtype="<u2").reshape(40, 24)
    blob = encode_bslz4(frame)
    zeroed = bytes(12) + blob[12:]
    np.testing.assert_array_equal(decompress_bslz4(zeroed, frame.size, frame.dtype).reshape(40, 24), frame)


@pytest.mark.parametrize("compression", ["bslz4", "lz4", "none"])
def test_v2_channels(scan4d, compression):
    patterns = scan4d.patterns[:4]
    messages = dectris_v2_messages(patterns, series=7, compression=compression, channels=("threshold_1", "threshold_2"))
    first = frames_of(run(DectrisDecoder(), [[m] for m in messages]))
    second = frames_of(run(DectrisDecoder(channel="threshold_2"), [[m] for m in messages]))
    assert [f.image_id for f in first] == [0, 1, 2, 3] and first[0].series_id == 7
    for a, b, p in zip(first, second, patterns):
        np.testing.assert_array_equal(a.data, p)
        np.testing.assert_array_equal(b.data, 2 * p)


def test_v2_missing_channel_is_malformed(scan4d):
    messages = dectris_v2_messages(scan4d.patterns[:2], compression="none")
    out = run(DectrisDecoder(channel="nope"), [[m] for m in messages])
    assert len(skips(out, "malformed")) == 2 and not frames_of(out)
    assert "no channel 'nope'" in skips(out, "malformed")[0].reason


def test_v2_virtual_images_and_autodetect_next_to_v1(scan4d):
    """One decoder reads a v1 series, then a v2 series: the format is told apart part by part."""
    vd = VirtualDetector(SCAN, inner=scan4d.inner, outer=scan4d.outer, centre=scan4d.centre)
    per_scan = SCAN[0] * SCAN[1]
    v1 = dectris_v1_messages(scan4d.patterns[:per_scan], series=1)
    v2 = [[m] for m in dectris_v2_messages(scan4d.patterns[per_scan:], series=2)]
    decoder = DectrisDecoder(virtual=vd)
    frames = frames_of(run(decoder, v1 + v2))
    ref = virtual_reference(scan4d.patterns, annular_mask((32, 32), scan4d.centre, scan4d.inner, scan4d.outer), SCAN)
    assert [(f.series_id, f.image_id) for f in frames] == [(1, 0), (2, 0)]
    np.testing.assert_array_equal(frames[0].data, ref[0])
    np.testing.assert_array_equal(frames[1].data, ref[1])
    assert decoder.versions == {1, 2}
    # with the simulated centre, the annulus holds exactly the dark-field counts placed there
    np.testing.assert_array_equal(frames[0].data, scan4d.adf_counts[0])


def test_gaps_fill_and_count(scan4d):
    per_scan = SCAN[0] * SCAN[1]
    messages = dectris_v1_messages(scan4d.patterns, series=1)
    lost = {5, 6, 7, per_scan + 40}  # three in the first scan, one in the second
    kept = [m for m in messages if not (m[0].startswith(b'{"htype": "dimage-1.0"') and json.loads(m[0])["frame"] in lost)]
    vd = VirtualDetector(SCAN, inner=scan4d.inner, outer=scan4d.outer, centre=scan4d.centre)
    out = run(DectrisDecoder(virtual=vd), kept)
    assert sum(s.count for s in skips(out, "gaps")) == 2  # two discontinuities
    frames = frames_of(out)
    assert len(frames) == 2
    ref = virtual_reference(scan4d.patterns, annular_mask((32, 32), scan4d.centre, scan4d.inner, scan4d.outer), SCAN)
    first = frames[0].data.reshape(-1)
    have = np.setdiff1d(np.arange(per_scan), [5, 6, 7])
    np.testing.assert_array_equal(first[have], ref[0].reshape(-1)[have])
    np.testing.assert_allclose(first[[5, 6, 7]], ref[0].reshape(-1)[have].mean(), rtol=1e-6)


def test_series_that_ends_early_drops_its_partial_scan(scan4d):
    per_scan = SCAN[0] * SCAN[1]
    messages = dectris_v1_messages(scan4d.patterns[: per_scan + 30], series=4)  # one scan and 30 positions
    vd = VirtualDetector(SCAN, inner=scan4d.inner, outer=scan4d.outer)
    out = run(DectrisDecoder(virtual=vd), messages)
    assert len(frames_of(out)) == 1
    incomplete = skips(out, "incomplete")
    assert len(incomplete) == 1 and f"30 of {per_scan}" in incomplete[0].reason
    assert type(out[-1]) is SeriesEnd


def test_corrupt_blobs_are_skipped_never_fatal(scan4d):
    """Truncated, bit-flipped, garbage and empty blobs: each image is one malformed skip, and the
    images after it decode (bitshuffle itself reads past a truncated buffer: the framing is
    checked first)."""
    patterns = scan4d.patterns[:40]
    messages = dectris_v1_messages(patterns, series=1)
    rng = np.random.default_rng(0)
    bad = {}
    for i, msg in enumerate(messages[1:-1]):
        if i % 3:
            continue
        blob = bytearray(msg[2])
        kind = (i // 3) % 4
        if kind == 0:
            blob = blob[: rng.integers(1, len(blob))]
        elif kind == 1:
            arr = np.frombuffer(bytes(blob), np.uint8).copy()
            arr[rng.integers(12, len(arr), 8)] = rng.integers(0, 256, 8)  # may still decode, to other pixels
            blob = bytearray(arr.tobytes())
        elif kind == 2:
            blob = bytearray(rng.integers(0, 256, rng.integers(13, 4000)).astype(np.uint8).tobytes())
        else:
            blob = bytearray(struct.pack(">QI", 10**9, 8192))
        msg[2] = bytes(blob)
        bad[i] = kind
    out = run(DectrisDecoder(), messages)
    frames = {f.image_id: f for f in frames_of(out)}
    good = [i for i in range(len(patterns)) if i not in bad]
    for i in good:
        np.testing.assert_array_equal(frames[i].data, patterns[i])
    certain = [i for i, k in bad.items() if k != 1]
    assert not set(certain) & set(frames)
    assert len(skips(out, "malformed")) == len(patterns) - len(frames)


def test_v1_lost_parts_resynchronise(scan4d):
    messages = dectris_v1_messages(scan4d.patterns[:6], series=1)
    messages[2] = [messages[2][0], messages[2][1], messages[2][3]]  # image 1 lost its blob
    messages[4] = [messages[4][0], messages[4][2], messages[4][3]]  # image 3 lost its dimage_d
    messages.insert(5, [b"\x01\x02 not a header"])
    out = run(DectrisDecoder(), messages)
    assert [f.image_id for f in frames_of(out)] == [0, 2, 4, 5]
    assert len(skips(out, "malformed")) >= 3


def test_bad_v2_messages(scan4d):
    cbor2 = load_codecs()[0]
    good = dectris_v2_messages(scan4d.patterns[:1], end=False)
    image = cbor2.loads(good[1])
    broken = [
        b"\xa1",  # truncated map
        cbor2.dumps({"type": "image", "series_id": 1, "image_id": 0, "data": {"x": cbor2.CBORTag(40, [[9000, 9000], b""])}}),
        cbor2.dumps({"type": "image", "series_id": 1, "image_id": 0, "data": {"x": cbor2.CBORTag(40, [[4, 4], cbor2.CBORTag(69, b"abc")])}}),
        cbor2.dumps({"type": "image", "series_id": "one", "image_id": 0, "data": image["data"]}),
        cbor2.dumps({"type": "nonsense", "series_id": 1}),
        cbor2.dumps([1, 2, 3]),
    ]
    out = run(DectrisDecoder(), [[m] for m in [*good, *broken, good[1]]])
    assert len(frames_of(out)) == 2
    assert len(skips(out, "malformed")) == len(broken)


def test_mask_files(tmp_path, scan4d):
    import tifffile

    weights = annular_mask((32, 32), scan4d.centre, scan4d.inner, scan4d.outer).astype(np.float32)
    weights[::2] *= 0.5
    np.save(tmp_path / "m.npy", weights)
    tifffile.imwrite(tmp_path / "m.tif", weights)
    ref = virtual_reference(scan4d.patterns, weights, SCAN)
    for name in ("m.npy", "m.tif"):
        vd = VirtualDetector(SCAN, mask=read_mask(tmp_path / name))
        frames = frames_of(run(DectrisDecoder(virtual=vd), dectris_v1_messages(scan4d.patterns)))
        np.testing.assert_allclose(np.stack([f.data for f in frames]), ref, rtol=1e-6)
    # a mask that does not fit the detector: each pattern is malformed, nothing emitted
    vd = VirtualDetector(SCAN, mask=np.ones((8, 8), np.float32))
    out = run(DectrisDecoder(virtual=vd), dectris_v1_messages(scan4d.patterns[:3]))
    assert len(skips(out, "malformed")) == 3 and not frames_of(out)
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(LivedenoiseError, match="cannot read"):
        read_mask(tmp_path / "bad.npy")


def test_flagged_pixels_left_out(scan4d):
    patterns = scan4d.patterns[: SCAN[0] * SCAN[1]].copy()
    hot = (int(scan4d.centre[1]), int(scan4d.centre[0] + scan4d.inner + 2))  # a pixel inside the annulus
    patterns[:, hot[0], hot[1]] = np.iinfo(np.uint16).max
    vd = VirtualDetector(SCAN, inner=scan4d.inner, outer=scan4d.outer, centre=scan4d.centre)
    frames = frames_of(run(DectrisDecoder(virtual=vd), dectris_v1_messages(patterns)))
    mask = annular_mask((32, 32), scan4d.centre, scan4d.inner, scan4d.outer)
    assert mask[hot]
    mask[hot] = False
    np.testing.assert_array_equal(frames[0].data, virtual_reference(patterns, mask, SCAN)[0])


def test_find_centre():
    y, x = np.mgrid[:40, :48]
    disc = (np.hypot(x - 20.25, y - 17.5) < 6).astype(np.float64)
    cx, cy = find_centre(np.stack([disc * 10, disc * 12]))
    assert abs(cx - 20.25) < 0.3 and abs(cy - 17.5) < 0.3
    assert find_centre(np.zeros((1, 4, 6))) == (2.5, 1.5)


def test_claimed_shape_checked_before_allocation():
    dimaged = json.dumps({"htype": "dimage_d-1.0", "shape": [100000, 100000], "type": "uint16", "encoding": "<"})
    dimage = json.dumps({"htype": "dimage-1.0", "series": 1, "frame": 0, "hash": "x"})
    out = DectrisDecoder().feed([dimage.encode(), dimaged.encode(), b"\x00" * 16])
    assert [m.kind for m in out] == ["malformed"] and "outside the accepted range" in out[0].reason


def test_missing_extra_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "cbor2", None)  # as if not installed
    with pytest.raises(LivedenoiseError, match=r"install livedenoise\[dectris\]"):
        DectrisDecoder()


def test_decompress_errors_are_malformed():
    with pytest.raises(MalformedMessage):
        decompress_bslz4(b"\x00" * 5, 16, np.dtype("<u2"))


@pytest.mark.parametrize("stream", ["v1", "v2"])
def test_the_streams_pixel_mask_is_left_out(scan4d, stream):
    """v2's start message carries the pixel mask, v1's header with header_detail 'all': its bad
    pixels get weight 0 (a hot pixel in the annulus would add to every position)."""
    patterns = scan4d.patterns.copy()
    ring = annular_mask((32, 32), scan4d.centre, scan4d.inner, scan4d.outer)
    rows, cols = np.nonzero(ring)
    bad = np.zeros((32, 32), np.uint32)
    bad[rows[:3], cols[:3]] = 8  # hot
    patterns[:, rows[:3], cols[:3]] = 900
    if stream == "v1":
        messages = dectris_v1_messages(patterns, series=2, pixel_mask=bad)
        assert len(messages[0]) == 8  # dheader, config, flatfield, pixel mask, count-rate table: headers and blobs
    else:
        messages = [[m] for m in dectris_v2_messages(patterns, series=2, pixel_mask=bad)]
    vd = VirtualDetector(SCAN, inner=scan4d.inner, outer=scan4d.outer, centre=scan4d.centre)
    out = run(DectrisDecoder(virtual=vd), messages)
    assert not [m for m in out if type(m) is Skip]
    expected = ring & (bad == 0)
    np.testing.assert_array_equal(np.stack([f.data for f in frames_of(out)]), virtual_reference(patterns, expected, SCAN))


def test_a_pixel_mask_of_the_wrong_shape_is_refused_once(scan4d):
    messages = [[m] for m in dectris_v2_messages(scan4d.patterns, series=2, pixel_mask=np.ones((64, 64), np.uint32))]
    vd = VirtualDetector(SCAN, inner=scan4d.inner, outer=scan4d.outer, centre=scan4d.centre)
    out = run(DectrisDecoder(virtual=vd), messages)
    assert [(s.kind, "refused" in s.reason) for s in out if type(s) is Skip] == [("malformed", True)]
    ref = virtual_reference(scan4d.patterns, annular_mask((32, 32), scan4d.centre, scan4d.inner, scan4d.outer), SCAN)
    np.testing.assert_array_equal(np.stack([f.data for f in frames_of(out)]), ref)


@pytest.mark.parametrize("stream", ["v1", "v2"])
def test_a_series_without_its_header_is_counted_and_picked_up(scan4d, stream):
    per_scan = SCAN[0] * SCAN[1]
    first = per_scan // 3
    if stream == "v1":
        messages = dectris_v1_messages(scan4d.patterns[first:], series=6, first_image=first, header=False)
    else:
        messages = [[m] for m in dectris_v2_messages(scan4d.patterns[first:], series=6, first_image=first, start=False)]
    vd = VirtualDetector(SCAN, inner=scan4d.inner, outer=scan4d.outer, centre=scan4d.centre)
    out = run(DectrisDecoder(virtual=vd), messages)
    assert [(s.kind, s.reason.split(":")[0]) for s in out if type(s) is Skip] == [("malformed", "series 6"), ("incomplete", "series 6")]
    assert "without the series' start" in skips(out, "malformed")[0].reason
    assert [f.image_id for f in frames_of(out)] == [1]  # scan frame 0 was joined a third in: dropped, never partial
    ref = virtual_reference(scan4d.patterns, annular_mask((32, 32), scan4d.centre, scan4d.inner, scan4d.outer), SCAN)
    np.testing.assert_array_equal(frames_of(out)[0].data, ref[1])


def test_v1_without_libertem_dectris_is_one_line_and_the_python_decoder(monkeypatch, caplog):
    from livedenoise.daemon import DectrisConfig
    from livedenoise.daemon._receive import make_decoder
    from livedenoise.detectors.dectris import _libertem

    monkeypatch.setattr(_libertem.importlib.util, "find_spec", lambda name: None)  # as if not installed
    with caplog.at_level("WARNING", logger="livedenoise.daemon"):
        decoder, _ = make_decoder(DectrisConfig(scan=(4, 4), outer=5.0, stream="v1"), source="tcp://127.0.0.1:9999")
    assert type(decoder) is DectrisDecoder
    lines = [r.getMessage() for r in caplog.records if "libertem-dectris" in r.getMessage()]
    assert lines == ["libertem-dectris is not installed (pip install 'livedenoise[dectris]'): the Python decoder reads Stream v1"]
