"""``serve --source-format dectris``: DECTRIS Stream v1 from LiberTEM's DectrisSim (a third-party
sender replaying a dump of a simulated 4D-STEM scan) and Stream v2 from the sender written from
DECTRIS' specification, through the virtual detector and a real model, on 127.0.0.1; Stream v1
read by the Python decoder (``--dectris-stream auto``) and by libertem-dectris's receiver process
(``v1``), with the bad input each must survive."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("bitshuffle")
pytest.importorskip("cbor2")
pytest.importorskip("lz4")

from livedenoise.daemon import DectrisConfig
from livedenoise.detectors import Annulus, find_centre
from livedenoise.sim import dectris_v1_messages, dectris_v2_messages, simulate_4dstem
from livedenoise.testing import LOOPBACK, SERVE_PUBLISH, read_address, send_in_thread
from livedenoise.testing import virtual_reference as reference

SCAN = (16, 16)


@pytest.mark.parametrize("stream", ["auto", "v1"])
def test_v1_dectris_sim_to_denoised_virtual_images(dectris_sim, daemon_factory, subscriber, conv_model, stream):
    """The same images from the Python decoder and from libertem-dectris's receiver process."""
    if stream == "v1":
        pytest.importorskip("libertem_dectris")
    scan = simulate_4dstem(SCAN, detector=32, frames=3, seed=1)
    sim = dectris_sim(dectris_v1_messages(scan.patterns, series=5))
    centre = None if stream == "auto" else scan.centre
    daemon = daemon_factory(
        model=conv_model, source=sim.get_uri(),
        dectris=DectrisConfig(scan=SCAN, inner=scan.inner, outer=scan.outer, centre=centre, stream=stream),
    )
    assert daemon.config.pull
    sub = subscriber(daemon.publish_address)
    sub.wait_ready()

    def send():
        sim.send_headers()
        sim.send_frames()
        sim.send_footer()

    thread = send_in_thread(send)
    denoised, raw = sub.collect(3, timeout=30)
    thread.join(10)
    stats = sub.stats_until(lambda s: s["denoised"] == 3 and s["detector_frames"] == scan.patterns.shape[0])
    assert [(m.header["series_id"], m.header["image_id"]) for m in denoised] == [(5, 0), (5, 1), (5, 2)]
    if stream == "auto":
        centre = daemon.source.decoder.virtual.centre_used
    else:
        assert stats["receiver"] == "libertem-dectris" and stats["receiver_restarts"] == 0
    expected = reference(scan.patterns, centre, scan.inner, scan.outer, SCAN)
    for msg, want in zip(raw, expected):
        assert msg.header["dtype"] == "<f4"
        np.testing.assert_array_equal(msg.data, want)
    assert all(m.data.shape == SCAN and np.isfinite(m.data).all() for m in denoised)
    assert stats["malformed"] == 0 and stats["gaps"] == 0 and stats["scan_incomplete"] == 0


def test_libertem_mocked_stream_passes_through(dectris_sim, daemon_factory, subscriber, conv_model):
    """DectrisSim's own mocked acquisition (512 x 512 frames of the frame index, bs16-lz4 with a
    header of zeros): without --scan, every detector frame is a frame."""
    libertem_dectris = pytest.importorskip("libertem_dectris")
    sim = libertem_dectris.DectrisSim.new_mocked("tcp://127.0.0.1", 4, random_port=True)
    daemon = daemon_factory(model=conv_model, source=sim.get_uri(), dectris=DectrisConfig())
    sub = subscriber(daemon.publish_address, (b"raw", b"stats"))
    sub.wait_ready()

    def send():
        sim.send_headers()
        sim.send_frames()
        sim.send_footer()

    thread = send_in_thread(send)
    raw = []
    for _ in range(200):
        msg = sub.recv(0.2)
        if msg is not None and msg.topic == b"raw":
            raw.append(msg)
        if len(raw) == 4:
            break
    thread.join(10)
    assert [m.header["image_id"] for m in raw] == [0, 1, 2, 3]
    for i, msg in enumerate(raw):
        assert msg.data.shape == (512, 512) and msg.header["dtype"] == "<u2"
        assert (msg.data == i).all()


def test_v2_with_gaps_corruption_and_an_early_end(dectris_v2_sender, daemon_factory, subscriber, conv_model):
    scan = simulate_4dstem(SCAN, detector=32, frames=2, seed=2)
    per_scan = SCAN[0] * SCAN[1]
    sender = dectris_v2_sender()
    daemon = daemon_factory(
        model=conv_model, source=sender.endpoint,
        dectris=DectrisConfig(scan=SCAN, inner=scan.inner, outer=scan.outer, centre=scan.centre),
    )
    sub = subscriber(daemon.publish_address)
    sub.wait_ready()
    series1 = dectris_v2_messages(scan.patterns, series=1, compression="bslz4")  # start, images, end
    kept = series1[:1] + [m for i, m in enumerate(series1[1:-1]) if i not in (10, 11)] + series1[-1:]
    kept[50] = kept[50][:-40]  # a truncated message: malformed
    series2 = dectris_v2_messages(scan.patterns[: per_scan // 2], series=2, compression="lz4")  # ends early
    send_in_thread(lambda: sender.send(kept + series2))
    denoised, raw = sub.collect(2, timeout=30)
    stats = sub.stats_until(lambda s: s["scan_incomplete"] == 1 and s["detector_frames"] == 2 * per_scan - 3 + per_scan // 2)
    assert [(m.header["series_id"], m.header["image_id"]) for m in denoised] == [(1, 0), (1, 1)]
    assert stats["malformed"] == 1 and stats["gaps"] == 2
    expected = reference(scan.patterns, scan.centre, scan.inner, scan.outer, SCAN)
    lost = np.array([10, 11, 51])  # images 10, 11 not sent; kept[50] (image 51, after the start and 0-9, 12-50) truncated
    first = raw[0].data.reshape(-1)
    have = np.setdiff1d(np.arange(per_scan), lost)
    np.testing.assert_array_equal(first[have], expected[0].reshape(-1)[have])
    np.testing.assert_array_equal(raw[1].data, expected[1])


def test_serve_cli_dectris_scan_64x64(dectris_sim, subscriber, conv_model):
    """``livedenoise serve --source-format dectris --dectris-stream v1 --scan 64x64`` with two
    annuli as a process, fed by DectrisSim: HAADF denoised, BF published on ``virtual``."""
    pytest.importorskip("libertem_dectris")
    scan = simulate_4dstem((64, 64), detector=32, frames=2, seed=3)
    sim = dectris_sim(dectris_v1_messages(scan.patterns, series=11))
    cmd = [
        sys.executable, "-m", "livedenoise", "serve", "--model", str(conv_model), "--source", sim.get_uri(),
        "--publish", LOOPBACK, "--provider", "cpu", "--warmup-size", "", "--source-format", "dectris",
        "--scan", "64x64", "--annulus", f"haadf={scan.inner}:{scan.outer}", "--annulus", f"bf=0:{scan.bf_radius}",
        "--dectris-stream", "v1",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        publish, _ = read_address(proc.stdout, SERVE_PUBLISH)
        sub = subscriber(publish)
        sub.wait_ready(timeout=30)

        def send():
            sim.send_headers()
            sim.send_frames()
            sim.send_footer()

        thread = send_in_thread(send)
        denoised, raw = sub.collect(2, timeout=60)
        thread.join(10)
        assert [(m.header["series_id"], m.header["image_id"]) for m in denoised] == [(11, 0), (11, 1)]
        assert all(m.data.shape == (64, 64) for m in denoised)
        # the virtual image follows the simulated HAADF counts
        corr = np.corrcoef(raw[0].data.ravel(), scan.adf_counts[0].ravel())[0, 1]
        assert corr > 0.95
        sub.stats_until(lambda s: s["virtual_images"] == 2 and s["receiver"] == "libertem-dectris", timeout=20)
        sub.collect(0, timeout=0.5)
        assert [(m.header["image_id"], m.header["detector"]) for m in sub.others] == [(0, "bf"), (1, "bf")]
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_serve_cli_bad_dectris_options(conv_model):
    base = [sys.executable, "-m", "livedenoise", "serve", "--model", str(conv_model), "--warmup-size", ""]
    cases = [
        (["--source-format", "eiger"], "--source-format 'eiger'"),
        (["--scan", "64x64"], "only with --source-format dectris"),
        (["--source-format", "dectris", "--scan", "64"], "--scan '64'"),
        (["--source-format", "dectris", "--scan", "64x64"], "--scan needs a virtual detector"),
        (["--source-format", "dectris", "--scan", "8x8", "--annulus", "40:10"], "expected 0 <= INNER < OUTER"),
        (["--source-format", "dectris", "--annulus", "10:40"], "need --scan"),
        (["--source-format", "dectris", "--scan", "8x8", "--annulus", "1:4", "--centre", "x"], "--centre 'x'"),
        (["--source-format", "dectris", "--scan", "8x8", "--annulus", "bf=1"], "--annulus '1'"),
        (["--source-format", "dectris", "--dectris-stream", "v3"], "--dectris-stream 'v3'"),
        (["--source-format", "dectris", "--dectris-stream", "v1", "--channel", "t1"], "Stream v2 channel"),
        (["--dectris-stream", "v1"], "only with --source-format dectris"),
    ]
    for args, message in cases:
        result = subprocess.run([*base, *args], capture_output=True, text=True, timeout=60)
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr


# --------------------------------------------------------------------------- libertem-dectris: several detectors, bad input

SMALL = (8, 8)  # 64 positions a scan: quick series
PADDING = [b'{"htype": "livedenoise-padding"}']  # between series: libertem-dectris's passive receiver passes over it


def in_fours(messages: list[list[bytes]]) -> list[list[bytes]]:
    """DectrisSim sends its dump 4 records at a time (``send_frames(n)``: n x 4 parts, read part by
    part by both receivers): pad a phase to a multiple of 4 records, after its series' end."""
    n = sum(len(m) for m in messages)
    return messages + [PADDING] * (-n % 4)


def phase_records(messages: list[list[bytes]]) -> int:
    return sum(len(m) for m in messages) // 4


def bad_blob(blob: bytes) -> bytes:
    """An LZ4 block of 0xFF bytes: literal lengths that run past the block, which LZ4 refuses."""
    return blob[:16] + b"\\xff" * (len(blob) - 16)


@pytest.fixture
def libertem():
    return pytest.importorskip("libertem_dectris")


def test_v1_libertem_several_detectors(libertem, dectris_sim, daemon_factory, subscriber, conv_model):
    scan = simulate_4dstem(SCAN, detector=32, frames=2, seed=4)
    sim = dectris_sim(dectris_v1_messages(scan.patterns, series=3))
    detectors = (Annulus(scan.inner, scan.outer, "haadf"), Annulus(0, scan.bf_radius, "bf"))
    daemon = daemon_factory(
        model=conv_model, source=sim.get_uri(), dectris=DectrisConfig(scan=SCAN, annuli=detectors, stream="v1")
    )
    sub = subscriber(daemon.publish_address)
    sub.wait_ready()
    thread = send_in_thread(lambda: (sim.send_headers(), sim.send_frames(), sim.send_footer()))
    _, raw = sub.collect(2, timeout=30)
    thread.join(10)
    sub.stats_until(lambda s: s["virtual_images"] == 2)
    sub.collect(0, timeout=0.5)  # what came with the stats
    virtual = sub.others
    assert [(m.header["image_id"], m.header["detector"], m.header["index"]) for m in virtual] == [(0, "bf", 1), (1, "bf", 1)]
    centre = find_centre(scan.patterns[:16])  # what the receiver process found, from the same first patterns
    np.testing.assert_array_equal(np.stack([m.data for m in raw]), reference(scan.patterns, centre, scan.inner, scan.outer, SCAN))
    bf = reference(scan.patterns, centre, 0, scan.bf_radius, SCAN)
    np.testing.assert_array_equal(np.stack([m.data for m in virtual]), bf)


def test_v1_libertem_bad_input(libertem, dectris_sim, daemon_factory, subscriber, conv_model):
    """Corrupt and truncated blobs, a series whose header is lost, a series restarted before its
    end, a change of shape mid-series and a stream that stops mid-scan, through libertem-dectris's
    receiver: counted, never a partial image, serve goes on. One phase after the other: after a
    failed series libertem-dectris drops what its socket held (it reconnects)."""
    per = SMALL[0] * SMALL[1]
    s32 = simulate_4dstem(SMALL, detector=32, frames=4, seed=11)
    s48 = simulate_4dstem(SMALL, detector=48, frames=4, seed=12)
    a = dectris_v1_messages(s32.patterns[: 2 * per], series=5)  # [header], 128 images, [end]
    a[1 + 10][2] = bad_blob(a[1 + 10][2])
    a[1 + 70][2] = a[1 + 70][2][:-9]  # truncated
    b = dectris_v1_messages(s32.patterns[:per], series=6, header=False)  # its header lost
    b += dectris_v1_messages(s32.patterns[: 2 * per], series=7, end=False)[: 1 + per + per // 2]  # restarted by ...
    b += dectris_v1_messages(s32.patterns[:per], series=8)  # ... series 8, lost with it
    half = per + per // 2  # 32x32, then 48x48 from half-way through scan 1
    c = dectris_v1_messages(s32.patterns[: 4 * per], series=9, end=False)[: 1 + half]  # its header: 4 scans
    c += dectris_v1_messages(s48.patterns[half : 4 * per], series=9, first_image=half, header=False)
    d = [PADDING, PADDING, *dectris_v1_messages(s32.patterns[: 2 * per], series=10, end=False)[: 1 + per + 21]]
    phases = [in_fours(a), in_fours(b), in_fours(c), d]  # d: [padding x 2, header] and 85 images, no end
    sim = dectris_sim([m for phase in phases for m in phase])
    daemon = daemon_factory(
        model=conv_model, source=sim.get_uri(),
        dectris=DectrisConfig(scan=SMALL, inner=s32.inner, outer=s32.outer, centre=s32.centre, stream="v1"),
    )
    sub = subscriber(daemon.publish_address)
    sub.wait_ready()
    phase = [threading.Event() for _ in range(5)]

    def send():
        for i, n in enumerate([*map(phase_records, phases[:3]), 1 + per + 20, 1]):
            phase[i].wait(20)
            sim.send_frames(n)  # the last: series 10's 85th image, after a pause: the stack held in Rust closes

    thread = send_in_thread(send)
    for i, until in enumerate([
        lambda s: s["received"] == 2,
        lambda s: s["malformed"] >= 4 and s["scan_incomplete"] >= 2,
        lambda s: s["detector_frames"] >= 128 + 4 * per,
        lambda s: True,
        lambda s: s["detector_frames"] >= 128 + 4 * per + per + 20,
    ]):
        phase[i].set()
        stats = sub.stats_until(until, timeout=30)
        time.sleep(0.3)  # libertem-dectris reconnected and is waiting for the next header
    thread.join(10)
    _, raw = sub.collect(20, timeout=10, idle=1.0)
    got = [(m.header["series_id"], m.header["image_id"]) for m in raw]
    assert {(5, 0), (5, 1), (9, 0), (9, 3), (10, 0)} <= set(got)
    assert not {(7, 0), (7, 1), (8, 0), (9, 1), (10, 1)} & set(got)  # never a partial scan frame
    assert not [k for k in got if k[0] == 6]  # its header never came
    by_id = {k: m.data for k, m in zip(got, raw)}
    ref32 = reference(s32.patterns, s32.centre, s32.inner, s32.outer, SMALL)
    ref48 = reference(s48.patterns, s32.centre, s32.inner, s32.outer, SMALL)
    np.testing.assert_array_equal(by_id[(9, 0)], ref32[0])
    np.testing.assert_array_equal(by_id[(9, 3)], ref48[3])
    np.testing.assert_array_equal(by_id[(10, 0)], ref32[0])
    first = by_id[(5, 0)].reshape(-1)
    have = np.setdiff1d(np.arange(per), [10])
    np.testing.assert_array_equal(first[have], ref32[0].reshape(-1)[have])  # image 10 filled
    # 2 blobs, series 6 (seen missing at 7), series 8 (lost with 7); 7's two scans; 9's scan 1; the blobs' gaps
    assert stats["malformed"] >= 4 and stats["scan_incomplete"] >= 3 and stats["gaps"] >= 2
    assert stats["receiver_restarts"] == 0
    t0 = time.monotonic()
    assert daemon.stop(timeout=10) == 0  # series 10 never ended: the receiver process is stopped, not waited for
    assert time.monotonic() - t0 < 8


def test_v1_libertem_receiver_process_dies_and_comes_back(libertem, dectris_sim, daemon_factory, subscriber, conv_model):
    """The receiver process dies mid-series (as it would of a segfault in libertem-dectris's
    decoder, which hands bitshuffle blobs without a framing check): counted, restarted, the scan
    frame it held dropped, serve goes on and the next series comes through."""
    per = SMALL[0] * SMALL[1]
    scan = simulate_4dstem(SMALL, detector=32, frames=2, seed=13)
    a = [PADDING, PADDING, *dectris_v1_messages(scan.patterns, series=20, end=False)[: 1 + per + per // 2 + 1]]
    b = in_fours(dectris_v1_messages(scan.patterns, series=21))
    sim = dectris_sim(a + b)
    daemon = daemon_factory(
        model=conv_model, source=sim.get_uri(),
        dectris=DectrisConfig(scan=SMALL, inner=scan.inner, outer=scan.outer, centre=scan.centre, stream="v1"),
    )
    sub = subscriber(daemon.publish_address)
    sub.wait_ready()
    restarted = threading.Event()

    def send():
        sim.send_frames(phase_records(a) - 1)
        time.sleep(0.2)
        sim.send_frames(1)  # the stack Rust holds closes at the next image after 20 ms
        restarted.wait(30)
        sim.send_frames(phase_records(b))

    thread = send_in_thread(send)
    sub.stats_until(lambda s: s["received"] == 1, timeout=30)  # series 20's scan 0; scan 1 half-way
    time.sleep(0.3)
    receiver = daemon.source.decoder
    old = receiver.pid
    os.kill(old, signal.SIGKILL)
    stats = sub.stats_until(lambda s: s["receiver_restarts"] == 1 and s["scan_incomplete"] == 1, timeout=30)
    assert receiver.pid != old and stats["malformed"] == 1
    restarted.set()
    _, raw = sub.collect(2, timeout=30)
    thread.join(10)
    assert [(m.header["series_id"], m.header["image_id"]) for m in raw] == [(20, 0), (21, 0), (21, 1)][: len(raw)]
    ref = reference(scan.patterns, scan.centre, scan.inner, scan.outer, SMALL)
    _, more = sub.collect(1, timeout=10)
    got = {(m.header["series_id"], m.header["image_id"]): m.data for m in raw + more}
    assert set(got) == {(20, 0), (21, 0), (21, 1)}
    np.testing.assert_array_equal(got[(21, 1)], ref[1])
    assert daemon.failure is None


def test_v2_bad_series(dectris_v2_sender, daemon_factory, subscriber, conv_model):
    """Stream v2 (the Python decoder): a pixel mask of the wrong shape (refused, images go on), a
    series without its start message (picked up at its next scan), a change of shape mid-series
    and a series that stops mid-scan before the next begins: counted, never a partial image."""
    per = SMALL[0] * SMALL[1]
    s32 = simulate_4dstem(SMALL, detector=32, frames=3, seed=21)
    s48 = simulate_4dstem(SMALL, detector=48, frames=3, seed=22)
    sender = dectris_v2_sender()
    daemon = daemon_factory(
        model=conv_model, source=sender.endpoint,
        dectris=DectrisConfig(scan=SMALL, inner=s32.inner, outer=s32.outer, centre=s32.centre),
    )
    sub = subscriber(daemon.publish_address)
    sub.wait_ready()
    messages = dectris_v2_messages(s32.patterns[:per], series=1, pixel_mask=np.ones((16, 16), np.uint32))
    messages += dectris_v2_messages(s32.patterns[per // 2 :], series=2, first_image=per // 2, start=False)
    messages += dectris_v2_messages(s32.patterns, series=3, end=False)[: 1 + per + 10]  # 32x32, then 48x48
    messages += dectris_v2_messages(s48.patterns[per + 10 :], series=3, first_image=per + 10, start=False)
    messages += dectris_v2_messages(s32.patterns[: per + 30], series=4, end=False)  # stops 30 into scan 1 ...
    messages += dectris_v2_messages(s32.patterns[:per], series=5)  # ... and the next series begins
    send_in_thread(lambda: sender.send(messages))
    _, raw = sub.collect(7, timeout=30)
    stats = sub.stats_until(lambda s: s["detector_frames"] == per + (3 * per - per // 2) + 3 * per + per + 30 + per)
    got = [(m.header["series_id"], m.header["image_id"]) for m in raw]
    assert got == [(1, 0), (2, 1), (2, 2), (3, 0), (3, 2), (4, 0), (5, 0)]
    ref32 = reference(s32.patterns, s32.centre, s32.inner, s32.outer, SMALL)
    ref48 = reference(s48.patterns, s32.centre, s32.inner, s32.outer, SMALL)
    for (series, k), msg in zip(got, raw):
        np.testing.assert_array_equal(msg.data, (ref48 if series == 3 and k == 2 else ref32)[k])
    # refused mask, series 2 without start; 2's scan 0, 3's scan 1 (shape), 4's scan 1 (ended by 5); the
    # virtual images' ids of series 3 jump over the dropped scan frame (0, 2)
    assert stats["malformed"] == 2 and stats["scan_incomplete"] == 3 and stats["gaps"] == 1
