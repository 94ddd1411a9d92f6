"""The monitor shows the daemon's guard (issues 19 and 24): an amber bar with its message while the
model does not fit the stream, gone when it fits again; and a real daemon's guard and score on a
dense stream.

Real Qt widgets, offscreen; real ZMQ sockets; every wait bounded.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import zmq

from livedenoise.analysis import estimate_content
from livedenoise.daemon import GuardConfig, QueueConfig
from livedenoise.engine import ModelCard
from livedenoise.protocol import TOPIC_STATS, encode_image, encode_published
from livedenoise.sim import SimConfig, render_atoms, simulate_movie
from livedenoise.testing import DEFAULT_NORM, LOOPBACK, bind_socket, build_onnx_model

os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before Qt loads (the viewer loads it lazily, in the fixtures)
pytest.importorskip("pyqtgraph", reason="the viewer extra is not installed")

MESSAGE = "this model expects about 1.2 atoms per nm²; this stream shows 9.4, on a lattice with 2.8 Å spacing: train on it"


@pytest.fixture
def pub():
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    address = bind_socket(sock, LOOPBACK)
    yield sock, address
    sock.close(0)
    ctx.term()


def open_window(qtbot, address, tmp_path):
    from livedenoise.viewer import MonitorWindow

    win = MonitorWindow(address, snapshot_dir=tmp_path / "snapshots")
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    return win


def amber_pixels(win) -> int:
    """Pixels of the guard bar's amber in a grab of the whole window."""
    from livedenoise.viewer._text import GUARD_COLOR

    image = win.grab().toImage()
    want = tuple(int(GUARD_COLOR[i : i + 2], 16) for i in (1, 3, 5))
    step = 4
    count = 0
    for y in range(0, image.height(), step):
        for x in range(0, image.width(), step):
            c = image.pixelColor(x, y)
            count += abs(c.red() - want[0]) <= 8 and abs(c.green() - want[1]) <= 8 and abs(c.blue() - want[2]) <= 8
    return count


def test_guard_bar_shows_the_message_and_clears_when_the_stream_fits_again(qtbot, pub, tmp_path):
    from livedenoise.viewer._text import GUARD_PREFIX

    sock, address = pub
    win = open_window(qtbot, address, tmp_path)
    try:
        def send(**fields) -> None:
            sock.send_multipart(encode_published(TOPIC_STATS, {"received": 0, "denoised": 0, **fields}))

        def stats_say(state: str):
            def check() -> bool:
                send(guard=state, guard_message=MESSAGE if state == "does not fit" else "", unexplained_mean=12.5,
                     unexplained_fraction=0.4, guard_density_ratio=7.8)
                time.sleep(0.02)
                return win.buffer.last_stats.get("guard") == state
            return check

        qtbot.waitUntil(stats_say("fits"), timeout=5000)
        qtbot.wait(300)  # an info tick or more
        assert win.guard_warning is None and not win.guard_banner.isVisible()
        assert amber_pixels(win) == 0
        qtbot.waitUntil(stats_say("does not fit"), timeout=5000)
        qtbot.waitUntil(win.guard_banner.isVisible, timeout=2000)
        assert win.guard_banner.text() == GUARD_PREFIX + MESSAGE
        assert amber_pixels(win) > 100  # on screen, in amber
        assert "guard   does not fit" in win.counters.text() and "unexplained 12.5 counts/frame" in win.counters.text()
        qtbot.waitUntil(stats_say("fits"), timeout=5000)
        qtbot.waitUntil(lambda: not win.guard_banner.isVisible(), timeout=2000)
        assert amber_pixels(win) == 0
        qtbot.waitUntil(stats_say("unknown"), timeout=5000)
        qtbot.wait(300)
        assert not win.guard_banner.isVisible()
    finally:
        win.close()
    assert not win.receiver.is_alive()


def hexagonal(size: int, spacing: float = 7.0) -> np.ndarray:
    n = int(size / spacing) + 4
    i, j = np.meshgrid(np.arange(-n, n), np.arange(-n, n))
    x, y = (i + 0.5 * j).ravel() * spacing, j.ravel() * spacing * np.sqrt(3) / 2
    keep = (x >= 3) & (x < size - 3) & (y >= 3) & (y < size - 3)
    return np.stack([x[keep], y[keep]], axis=1)


def test_view_of_a_live_daemon_on_a_dense_stream_shows_the_guard(qtbot, tmp_path, detector, daemon_factory):
    size = 128
    expects = estimate_content(simulate_movie(SimConfig(size=size, frames=32, seed=31)).noisy)
    card = ModelCard(preset="test-conv", normalisation=DEFAULT_NORM, expects=expects.to_dict())
    model = build_onnx_model(tmp_path / "sparse.onnx", card=card)
    push, source = detector()
    daemon = daemon_factory(
        model=model, source=source, pull=True, queue=QueueConfig(lossless=True),
        guard=GuardConfig(window=24, interval=0.2, score_rate=100),
    )
    truth = 2.4e-4 + render_atoms(hexagonal(size), size)
    frames = np.random.default_rng(0).poisson(300 * truth + 0.5, (16, size, size)).astype("<u2")
    win = open_window(qtbot, daemon.publish_address, tmp_path)
    try:
        sent = iter(range(10**6))

        def stream() -> bool:
            for frame in frames[:4]:
                push.send_multipart(encode_image(frame, series_id=1, image_id=next(sent)))
            qtbot.wait(50)
            return win.guard_banner.isVisible()

        qtbot.waitUntil(stream, timeout=60000)
        text = win.guard_banner.text()
        assert text.startswith("model does not fit this stream: a causal filter (") and "; this model expects about " in text
        stats = win.buffer.last_stats
        assert stats["guard"] == "does not fit" and stats["score_filter_db"] > stats["score_db"]
        assert f"score {stats['score_db']:+.1f} dB, best filter {stats['score_filter_db']:+.1f} dB" in win.counters.text()
        history = win.buffer.history()  # the score is plotted: both lines hold the stats' values
        assert np.isfinite(history.stats["score_db"]).any() and np.isfinite(history.stats["score_filter_db"]).any()
    finally:
        win.close()
    assert daemon.stop() == 0
