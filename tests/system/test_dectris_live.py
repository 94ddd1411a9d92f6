"""``serve --source-format dectris``: DECTRIS Stream v1 from LiberTEM's DectrisSim (a third-party
sender replaying a dump of a simulated 4D-STEM scan) and Stream v2 from the sender written from
DECTRIS' specification, through the virtual detector and a real model, on 127.0.0.1."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

pytest.importorskip("bitshuffle")
pytest.importorskip("cbor2")
pytest.importorskip("lz4")

from livedenoise.daemon import DectrisConfig
from livedenoise.detectors import annular_mask
from livedenoise.sim import dectris_v1_messages, dectris_v2_messages, simulate_4dstem
from livedenoise.testing import LOOPBACK, SERVE_PUBLISH, read_address

SCAN = (16, 16)


def reference(patterns: np.ndarray, centre, inner: float, outer: float, scan) -> np.ndarray:
    mask = annular_mask(patterns.shape[1:], centre, inner, outer)
    return (patterns.astype(np.float64) * mask).sum(axis=(1, 2)).reshape(-1, *scan).astype("<f4")


def send_in_thread(target) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_v1_dectris_sim_to_denoised_virtual_images(dectris_sim, daemon_factory, subscriber, conv_model):
    scan = simulate_4dstem(SCAN, detector=32, frames=3, seed=1)
    sim = dectris_sim(dectris_v1_messages(scan.patterns, series=5))
    daemon = daemon_factory(
        model=conv_model, source=sim.get_uri(), dectris=DectrisConfig(scan=SCAN, inner=scan.inner, outer=scan.outer)
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
    vd = daemon.source.decoder.virtual
    expected = reference(scan.patterns, vd.centre_used, scan.inner, scan.outer, SCAN)
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
    """``livedenoise serve --source-format dectris --scan 64x64`` as a process, fed by DectrisSim."""
    scan = simulate_4dstem((64, 64), detector=32, frames=2, seed=3)
    sim = dectris_sim(dectris_v1_messages(scan.patterns, series=11))
    cmd = [
        sys.executable, "-m", "livedenoise", "serve", "--model", str(conv_model), "--source", sim.get_uri(),
        "--publish", LOOPBACK, "--provider", "cpu", "--warmup-size", "", "--source-format", "dectris",
        "--scan", "64x64", "--annulus", f"{scan.inner}:{scan.outer}",
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
    ]
    for args, message in cases:
        result = subprocess.run([*base, *args], capture_output=True, text=True, timeout=60)
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr
