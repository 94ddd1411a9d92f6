"""livedenoise.detectors.MerlinStream: a Merlin's data port through libertem-qd-mpx into series,
frames, virtual images and skips; fed by the project's sender (livedenoise.sim.MerlinSender) on
127.0.0.1. The daemon around it: tests/system/test_merlin_live.py."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from livedenoise.detectors import Skip, VirtualDetector, annular_mask, parse_data_address
from livedenoise.errors import LivedenoiseError
from livedenoise.protocol import ImageFrame
from livedenoise.sim import merlin_fault, merlin_stream, simulate_4dstem

SCAN = (8, 8)


def test_data_address():
    assert parse_data_address("tcp://127.0.0.1:6342") == ("127.0.0.1", 6342)
    assert parse_data_address(" tcp://[::1]:7000 ") == ("::1", 7000)
    for bad in ("127.0.0.1:6342", "tcp://merlin", "tcp://merlin:0", "tcp://merlin:70000", "ipc:///tmp/x", "tcp://*:6342x"):
        with pytest.raises(LivedenoiseError, match="tcp://HOST:PORT"):
            parse_data_address(bad)


def test_without_the_extra_one_line_names_it():
    code = (
        "import sys; sys.modules['libertem_qd_mpx'] = None\n"
        "from livedenoise.detectors import MerlinStream\n"
        "from livedenoise.errors import LivedenoiseError\n"
        "try:\n    MerlinStream('127.0.0.1', 6342)\n"
        "except LivedenoiseError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "--source-format merlin needs libertem-qd-mpx: pip install livedenoise[merlin]", out


@pytest.fixture
def stream_factory():
    """``make(sender, virtual=None) -> MerlinStream`` started and connected (the sender has accepted)."""
    from livedenoise.detectors import MerlinStream

    streams = []

    def make(sender, virtual=None, **options):
        stream = MerlinStream(sender.host, sender.port, virtual=virtual, **options)
        streams.append(stream)
        stream.start()
        sender.accept(timeout=10)
        return stream

    yield make
    for s in streams:
        assert s.close(timeout=5)


def take(stream, until, timeout: float = 10.0) -> list:
    """Poll ``stream`` until ``until(messages so far)``."""
    out: list = []
    deadline = time.monotonic() + timeout
    while not until(out):
        assert time.monotonic() < deadline, f"timed out with {[type(m).__name__ for m in out][-20:]}"
        out += stream.poll(0.05)
    return out


def kinds(messages) -> list[str]:
    return [m.kind if isinstance(m, Skip) else type(m).__name__ for m in messages if not isinstance(m, ImageFrame)]


def sums(patterns, centre, inner, outer) -> np.ndarray:
    mask = annular_mask(patterns.shape[1:], centre, inner, outer)
    return (patterns.astype(np.float64) * mask).sum(axis=(1, 2)).reshape(-1, *SCAN).astype("<f4")


def test_acquisitions_into_virtual_images(merlin_sender, stream_factory):
    scan = simulate_4dstem(SCAN, detector=32, frames=3, seed=4)
    sender = merlin_sender()
    vd = VirtualDetector(SCAN, inner=scan.inner, outer=scan.outer, centre=scan.centre)
    stream = stream_factory(sender, vd)
    assert sender.send(merlin_stream(scan.patterns, fmt="u16", scan=SCAN) + merlin_stream(scan.patterns[:64], fmt="u8"))
    out = take(stream, lambda m: kinds(m).count("SeriesEnd") == 2)
    assert kinds(out) == ["SeriesStart", "SeriesEnd", "SeriesStart", "SeriesEnd"]
    start = out[0]
    assert start.series_id == 1 and start.header == {
        "stream": "merlin", "frames_in_acquisition": 192, "detector_shape": [32, 32], "scan": [8, 8],
    }
    images = [m for m in out if isinstance(m, ImageFrame)]
    assert [(m.series_id, m.image_id) for m in images] == [(1, 0), (1, 1), (1, 2), (2, 0)]
    want = sums(scan.patterns, scan.centre, scan.inner, scan.outer)
    for got, ref in zip(images, [*want, want[0]]):
        assert got.data.dtype == np.dtype("<f4")
        np.testing.assert_array_equal(got.data, ref)
    assert stream.counters() == {"detector_frames": 256, "acquisitions": 2}


def test_frames_without_a_scan(merlin_sender, stream_factory):
    rng = np.random.default_rng(5)
    sender = merlin_sender()
    stream = stream_factory(sender)
    for fmt, dtype in (("u32", "<u4"), ("r6", "|u1"), ("u16", "<u2")):
        patterns = rng.integers(0, 60, (5, 256, 256), dtype=np.uint32)
        assert sender.send(merlin_stream(patterns, fmt=fmt))
        out = take(stream, lambda m: kinds(m) == ["SeriesStart", "SeriesEnd"])
        frames = [m for m in out if isinstance(m, ImageFrame)]
        assert [f.image_id for f in frames] == list(range(5))
        assert all(f.data.dtype == np.dtype(dtype) for f in frames)
        np.testing.assert_array_equal(np.stack([f.data for f in frames]), patterns)


@pytest.mark.parametrize(("fault", "skip"), [
    ("stops", "disconnects"), ("truncated", "malformed"), ("corrupt", "malformed"), ("shape-change", "malformed"),
])
def test_a_broken_acquisition_drops_its_open_scan_and_the_next_one_comes_through(merlin_sender, stream_factory, fault, skip):
    """64 x 64 u16 patterns: the library's stacks hold 136 of them, so two stacks arrive before the
    fault at pattern 300 (272 patterns: four whole scans of 64 and 16 of the fifth); the fifth goes."""
    scan = simulate_4dstem(SCAN, detector=64, frames=6, seed=6)
    sender = merlin_sender()
    vd = VirtualDetector(SCAN, inner=scan.inner, outer=scan.outer, centre=scan.centre)
    stream = stream_factory(sender, vd)
    sender.send(merlin_fault(fault, scan.patterns, at=300))
    if fault == "stops":
        sender.hang_up()
    out = take(stream, lambda m: skip in kinds(m))
    images = [m for m in out if isinstance(m, ImageFrame)]
    assert [m.image_id for m in images] == [0, 1, 2, 3]  # 272 patterns: 4 whole scans of 64
    assert kinds(out) == ["SeriesStart", "incomplete", "SeriesEnd", skip]
    assert "acquisition 1 after 272 frames" in out[-1].reason
    sender.accept(timeout=10)  # the library connects again
    sender.send(merlin_stream(scan.patterns[:64]))
    out = take(stream, lambda m: "SeriesEnd" in kinds(m))
    assert kinds(out) == ["SeriesStart", "SeriesEnd"]
    assert [(m.series_id, m.image_id) for m in out if isinstance(m, ImageFrame)] == [(2, 0)]


@pytest.mark.parametrize("fault", ["no-header", "bad-header"])
def test_an_acquisition_header_missing_or_broken(merlin_sender, stream_factory, fault):
    patterns = simulate_4dstem(SCAN, detector=32, frames=1, seed=7).patterns
    sender = merlin_sender()
    stream = stream_factory(sender, VirtualDetector(SCAN, inner=4, outer=12))
    sender.send(merlin_fault(fault, patterns))
    out = take(stream, lambda m: "malformed" in kinds(m))
    assert kinds(out) == ["malformed"] and out[0].reason.startswith("Merlin stream: a general fatal error")
    assert ("missing key" if fault == "no-header" else "many") in out[0].reason
    sender.accept(timeout=10)
    sender.send(merlin_stream(patterns))
    out = take(stream, lambda m: "SeriesEnd" in kinds(m))
    assert [(m.series_id, m.image_id) for m in out if isinstance(m, ImageFrame)] == [(1, 0)]


def test_a_format_the_library_cannot_decode_is_skipped_whole(merlin_sender, stream_factory):
    """24-bit raw: libertem-qd-mpx 0.3.2 refuses it; one skip, the acquisition's other stacks go
    unread, the next acquisition is read."""
    rng = np.random.default_rng(8)
    sender = merlin_sender()
    stream = stream_factory(sender, VirtualDetector((2, 2), inner=0, outer=300, centre=(127.5, 127.5)))
    patterns = rng.integers(0, 1 << 20, (40, 256, 256), dtype=np.uint32)
    sender.send(merlin_stream(patterns, fmt="r24") + merlin_stream(patterns[:4] % 4096))
    out = take(stream, lambda m: kinds(m).count("SeriesEnd") == 2)
    assert kinds(out) == ["SeriesStart", "malformed", "SeriesEnd", "SeriesStart", "SeriesEnd"]
    assert "unsupported counter depth: 24" in out[1].reason and "the rest of it is skipped" in out[1].reason
    images = [m for m in out if isinstance(m, ImageFrame)]
    assert [(m.series_id, m.image_id) for m in images] == [(2, 0)]
    np.testing.assert_array_equal(images[0].data.reshape(-1), (patterns[:4] % 4096).sum(axis=(1, 2)).astype("<f4"))


def test_close_wakes_a_stalled_acquisition(merlin_sender, stream_factory):
    """The detector stops sending mid-acquisition but keeps the connection: the library waits
    inside get_next_stack with no way to be interrupted; close() shuts our connection down, so
    its thread returns and closes the library's connection."""
    patterns = simulate_4dstem(SCAN, detector=32, frames=2, seed=9).patterns
    sender = merlin_sender()
    stream = stream_factory(sender, VirtualDetector(SCAN, inner=4, outer=12))
    sender.send(merlin_stream(patterns)[:20])
    take(stream, lambda m: "SeriesStart" in kinds(m))
    time.sleep(0.3)
    t0 = time.monotonic()
    assert stream.close(timeout=0.5)
    assert time.monotonic() - t0 < 2
    assert not any(t.name == "ld-merlin" and t.is_alive() for t in threading.enumerate())
