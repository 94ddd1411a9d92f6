"""``serve --source-format merlin``: a real daemon reading the project's Merlin sender
(livedenoise.sim.MerlinSender, the MIB-over-TCP data port, on 127.0.0.1) through libertem-qd-mpx,
the virtual detector and a real model; broken streams counted, logged and dropped while the
daemon keeps running; the command line."""

from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("libertem_qd_mpx")

from livedenoise.daemon import MerlinConfig
from livedenoise.sim import merlin_fault, merlin_stream, simulate_4dstem
from livedenoise.testing import LOOPBACK, SERVE_PUBLISH, read_address, send_in_thread
from livedenoise.testing import virtual_reference as reference

SCAN = (16, 16)


@pytest.mark.parametrize(("fmt", "layout", "detector", "scan"), [
    ("u16", "single", 32, SCAN),
    ("r6", "quad", 512, (4, 4)),  # a Merlin quad's raw 6-bit readout, 512 x 512
])
def test_merlin_to_denoised_virtual_images(merlin_sender, daemon_factory, subscriber, conv_model, fmt, layout, detector, scan):
    sim = simulate_4dstem(scan, detector=detector, frames=3, seed=1)
    sender = merlin_sender()
    daemon = daemon_factory(
        model=conv_model, source=sender.address, merlin=MerlinConfig(scan=scan, inner=sim.inner, outer=sim.outer)
    )
    sub = subscriber(daemon.publish_address)
    sub.wait_ready()
    sender.accept(timeout=10)
    send_in_thread(lambda: sender.send(merlin_stream(sim.patterns, fmt=fmt, layout=layout, scan=scan)))
    denoised, raw = sub.collect(3, timeout=30)
    n = sim.patterns.shape[0]
    stats = sub.stats_until(lambda s: s["denoised"] == 3 and s["detector_frames"] == n and s["acquisitions"] == 1)
    assert [(m.header["series_id"], m.header["image_id"]) for m in denoised] == [(1, 0), (1, 1), (1, 2)]
    vd = daemon.source.stream.virtual
    expected = reference(sim.patterns, vd.centre_used, sim.inner, sim.outer, scan)
    for msg, want in zip(raw, expected):
        assert msg.header["dtype"] == "<f4"
        np.testing.assert_array_equal(msg.data, want)
    assert all(m.data.shape == scan and np.isfinite(m.data).all() for m in denoised)
    assert stats["malformed"] == 0 and stats["disconnects"] == 0 and stats["scan_incomplete"] == 0


def test_broken_streams_are_counted_and_dropped_and_the_daemon_keeps_running(
    merlin_sender, daemon_factory, subscriber, conv_model
):
    """Each broken acquisition (64 x 64 u16 patterns, 8 x 8 scans: 272 patterns, four whole scans,
    reach the daemon before the break at pattern 300) is followed by a good one of one scan; the
    receiver gives a broken connection up and connects again. Published: only whole scans."""
    scan = (8, 8)
    sim = simulate_4dstem(scan, detector=64, frames=6, seed=2)
    sender = merlin_sender()
    daemon = daemon_factory(
        model=conv_model, source=sender.address,
        merlin=MerlinConfig(scan=scan, inner=sim.inner, outer=sim.outer, centre=sim.centre),
    )
    sub = subscriber(daemon.publish_address)
    sub.wait_ready()
    expected = reference(sim.patterns, sim.centre, sim.inner, sim.outer, scan)
    received = series = 0
    sender.accept(timeout=10)
    for i, fault in enumerate(["stops", "truncated", "corrupt", "shape-change", "no-header", "bad-header"]):
        sender.send(merlin_fault(fault, sim.patterns, at=300))
        if fault == "stops":
            sender.hang_up()
        sender.accept(timeout=10)  # the receiver connects again
        sender.send(merlin_stream(sim.patterns[64 * i : 64 * (i + 1)]))  # a good acquisition: scan i
        whole = [] if fault in ("no-header", "bad-header") else [0, 1, 2, 3]  # the broken one's whole scans
        _, raw = sub.collect(len(whole) + 1, timeout=30)
        series += (1 if whole else 0) + 1
        assert [(m.header["series_id"], m.header["image_id"]) for m in raw] == [(series - 1, k) for k in whole] + [(series, 0)]
        for msg, want in zip(raw, [*expected[whole], expected[i]]):
            np.testing.assert_array_equal(msg.data, want)
        received += len(raw)
    stats = sub.stats_until(lambda s: s["denoised"] == received)
    assert stats["disconnects"] == 1  # the stream that stopped
    assert stats["malformed"] == 5  # truncated, corrupt, a change of frame size, no header, a broken header
    assert stats["scan_incomplete"] == 4  # the scan open at each break inside an acquisition
    assert stats["acquisitions"] == series == 10 and stats["received"] == received == 4 * 5 + 2
    assert all(t.is_alive() for t in daemon._threads)


def test_serve_cli_merlin_scan(merlin_sender, subscriber, conv_model):
    """``livedenoise serve --source-format merlin --scan 32x32`` as a process, fed by the sender."""
    sim = simulate_4dstem((32, 32), detector=32, frames=2, seed=3)
    sender = merlin_sender()
    cmd = [
        sys.executable, "-m", "livedenoise", "serve", "--model", str(conv_model), "--source", sender.address,
        "--publish", LOOPBACK, "--provider", "cpu", "--warmup-size", "", "--source-format", "merlin",
        "--scan", "32x32", "--annulus", f"{sim.inner}:{sim.outer}",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        publish, _ = read_address(proc.stdout, SERVE_PUBLISH)
        sub = subscriber(publish)
        sub.wait_ready(timeout=30)
        sender.accept(timeout=10)
        send_in_thread(lambda: sender.send(merlin_stream(sim.patterns, fmt="u8", scan=(32, 32))))
        denoised, raw = sub.collect(2, timeout=60)
        assert [(m.header["series_id"], m.header["image_id"]) for m in denoised] == [(1, 0), (1, 1)]
        assert all(m.data.shape == (32, 32) for m in denoised)
        corr = np.corrcoef(raw[0].data.ravel(), sim.adf_counts[0].ravel())[0, 1]
        assert corr > 0.95  # the virtual image follows the simulated HAADF counts
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_serve_cli_bad_merlin_options(conv_model):
    base = [sys.executable, "-m", "livedenoise", "serve", "--model", str(conv_model), "--warmup-size", ""]
    merlin = ["--source-format", "merlin", "--source", "tcp://127.0.0.1:6342"]
    cases = [
        ([*merlin, "--channel", "threshold_1"], "--channel: only with --source-format dectris"),
        (["--source-format", "merlin", "--source", "tcp://127.0.0.1"], "a Merlin is read at tcp://HOST:PORT"),
        ([*merlin, "--scan", "8x8"], "--scan needs a virtual detector"),
        ([*merlin, "--annulus", "1:4"], "need --scan"),
        (["--scan", "8x8"], "only with --source-format dectris (or merlin)"),
    ]
    for args, message in cases:
        result = subprocess.run([*base, *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr
    code = "import sys; sys.modules['libertem_qd_mpx'] = None\nfrom livedenoise.cli import main\nmain()\n"
    result = subprocess.run([sys.executable, "-c", code, "serve", *base[4:], *merlin], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --source-format merlin needs libertem-qd-mpx: pip install livedenoise[merlin]"
    ]
