"""The live monitor, headless: a real ZMQ publisher feeds known frames and stats to a real window.

Qt runs offscreen (set here, before any Qt import). Every wait is bounded (``qtbot.waitUntil``
with a timeout), every window is closed and its receiver thread stopped at the end of its test.
"""

from __future__ import annotations

import os

os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before Qt loads: pixel tests need the same platform everywhere

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zmq

from livedenoise.protocol import (
    TOPIC_DENOISED,
    TOPIC_HOPS,
    TOPIC_RAW,
    TOPIC_STATS,
    encode_atoms,
    encode_hops,
    encode_published,
)
from livedenoise.viewer import StreamBuffer

pg = pytest.importorskip("pyqtgraph", reason="the viewer extra is not installed")
from pyqtgraph.Qt import QtCore, QtGui, QtWidgets

from livedenoise.engine import EngineConfig
from livedenoise.testing import LOOPBACK, bind_socket
from livedenoise.viewer import FIXED_LEVEL_FRAMES, MonitorWindow
from livedenoise.viewer._overlay_draw import HOP_COLOR, HOP_FADE_S, TRAIL_FRAMES
from livedenoise.viewer._text import NO_ATOMS_AFTER_S, NO_ATOMS_NOTE

REPO = Path(__file__).resolve().parents[2]
SIZE = 64


class FakeDaemon:
    """The daemon's PUB side, driven by the test: known frames and stats, bound at ``address``
    (port 0 by default; a restart binds the :attr:`address` of the first life again)."""

    def __init__(self, address: str = LOOPBACK):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)  # the tests decide what is sent; nothing dropped here
        self.address = bind_socket(self.sock, address)  # retried while a port just released is busy

    def frame(self, raw, denoised, *, series_id=1, image_id=0, css=None, latency_ms=2.5) -> None:
        ids = {"series_id": series_id, "image_id": image_id}
        self.sock.send_multipart(encode_published(TOPIC_DENOISED, {**ids, "css": css, "latency_ms": latency_ms}, denoised))
        self.sock.send_multipart(encode_published(TOPIC_RAW, ids, raw))

    def atoms(self, positions, *, series_id=1, image_id=0, **extra) -> None:
        """An atoms message; ``extra``: evidence, track_ids, weak, weak_z (serve --atoms with evidence and tracks)."""
        k = len(positions)
        ids = {"series_id": series_id, "image_id": image_id}
        self.sock.send_multipart(
            encode_atoms(ids, np.reshape(positions, (k, 2)), np.ones(k), np.ones(k), threshold=0.3, **extra)
        )

    def hops(self, track_ids, before, after, *, series_id=1, image_id=1) -> None:
        ids = {"series_id": series_id, "image_id": image_id}
        m = len(track_ids)
        self.sock.send_multipart(
            encode_hops(ids, np.array(track_ids), np.reshape(before, (m, 2)), np.reshape(after, (m, 2)),
                        np.full(m, image_id - 1))
        )

    def stats(self, **fields) -> None:
        header = {
            "received": 0, "denoised": 0, "dropped": 0, "malformed": 0, "failed": 0,
            "fps_in": 150.0, "fps_out": 149.5, "latency_ms_p50": 3.0, "latency_ms_p99": 7.5,
            "queue_depth": 0, "css": 0.8, "model": "tiny-test", "provider": "CPUExecutionProvider",
        }
        self.sock.send_multipart(encode_published(TOPIC_STATS, {**header, **fields}))

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def blocks(values, dtype) -> np.ndarray:
    """A SIZE² frame of four uniform 32² quadrants: [[a, b], [c, d]]."""
    a, b, c, d = values
    half = SIZE // 2
    frame = np.empty((SIZE, SIZE), dtype)
    frame[:half, :half], frame[:half, half:], frame[half:, :half], frame[half:, half:] = a, b, c, d
    return frame


RAW = blocks((100, 400, 700, 1000), "<u2")
DENOISED = blocks((0.1, 0.4, 0.7, 0.9), "<f4")


@pytest.fixture
def daemon():
    pubs = [FakeDaemon()]
    yield pubs  # a list: the restart test appends the second life of the daemon
    for pub in pubs:
        pub.close()


@pytest.fixture
def window(qtbot, daemon, tmp_path):
    win = MonitorWindow(daemon[0].address, snapshot_dir=tmp_path / "snapshots")
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    yield win
    win.close()
    assert not win.receiver.is_alive(), "the receiver thread outlived its window"
    QtWidgets.QApplication.processEvents()
    assert not [w for w in QtWidgets.QApplication.topLevelWidgets() if w.isVisible()], "leaked widgets"


def connect(qtbot, pub: FakeDaemon, win: MonitorWindow) -> None:
    """Send stats until the viewer hears them: the subscription is then in effect (slow joiner)."""
    start = win.buffer.counts["stats"]

    def heard() -> bool:
        pub.stats()
        QtCore.QThread.msleep(10)
        return win.buffer.counts["stats"] > start

    qtbot.waitUntil(heard, timeout=5000)


def shown_id(win: MonitorWindow):
    return None if win.frame is None else (win.frame.series_id, win.frame.image_id)


def screen_grey(win: MonitorWindow, panel, row: int, col: int) -> tuple[int, int, int]:
    """The colour on screen at image pixel (row, col) of a panel, from a grab of the image widget."""
    scene = panel.image.mapToScene(QtCore.QPointF(col + 0.5, row + 0.5))
    at = win.images.mapFromScene(scene)
    color = win.images.grab().toImage().pixelColor(at)
    return color.red(), color.green(), color.blue()


def expected_grey(value: float, levels: tuple[float, float]) -> float:
    lo, hi = levels
    return float(np.clip((value - lo) / (hi - lo) * 255, 0, 255))


# --------------------------------------------------------------------------- tests


def test_displays_the_frames_sent_through_the_levels(qtbot, daemon, window):
    pub = daemon[0]
    connect(qtbot, pub, window)
    for i in range(FIXED_LEVEL_FRAMES + 1):
        pub.frame(RAW, DENOISED, series_id=7, image_id=i, css=0.9)
    qtbot.waitUntil(lambda: shown_id(window) == (7, FIXED_LEVEL_FRAMES), timeout=3000)

    for panel, sent in ((window.raw_panel, RAW), (window.denoised_panel, DENOISED)):
        on_screen = panel.image.image
        assert on_screen.dtype == np.float32 and on_screen.flags.c_contiguous
        np.testing.assert_array_equal(on_screen, sent.astype(np.float32))
        levels = panel.levels()  # fixed from the first frames: their 0.1 and 99.9 percentiles
        assert levels == pytest.approx((float(sent.min()), float(sent.max())))
        for row, col in ((16, 16), (16, 48), (48, 16), (48, 48)):
            red, green, blue = screen_grey(window, panel, row, col)
            assert red == green == blue, "grey colour map"
            assert abs(red - expected_grey(float(sent[row, col]), levels)) <= 2, (panel.title, row, col, red, levels)

    # brighter quadrants look brighter, as sent
    greys = [screen_grey(window, window.denoised_panel, r, c)[0] for r, c in ((16, 16), (16, 48), (48, 16), (48, 48))]
    assert greys == sorted(greys) and greys[0] < greys[-1]

    # pan and zoom are linked: zooming into the raw frame zooms the denoised one alike
    window.raw_panel.view.setRange(xRange=(8, 24), yRange=(40, 56), padding=0)
    np.testing.assert_allclose(window.denoised_panel.view.viewRange(), window.raw_panel.view.viewRange())


def test_css_plot_counters_and_status_update(qtbot, daemon, window):
    pub = daemon[0]
    connect(qtbot, pub, window)
    css_values = [None, 0.5, 0.6, 0.7, 0.8, 0.9]
    for i, css in enumerate(css_values):
        pub.frame(RAW, DENOISED, series_id=3, image_id=i, css=css)
    pub.stats(received=6, denoised=6, dropped=2, malformed=1, failed=0)
    qtbot.waitUntil(lambda: window.buffer.counts["denoised"] == 6 and window.buffer.last_stats.get("dropped") == 2, timeout=3000)

    def updated() -> bool:
        _, ys = window.css_points.getData()
        return ys is not None and len(ys) == 5 and "dropped 2" in window.counters.text()

    qtbot.waitUntil(updated, timeout=3000)
    np.testing.assert_allclose(window.css_points.getData()[1], [0.5, 0.6, 0.7, 0.8, 0.9])
    _, smooth = window.css_line.getData()
    assert smooth[-1] == pytest.approx(0.7)  # mean of the five so far
    text = window.counters.text()
    for part in ("received 6", "denoised 6", "dropped 2", "malformed 1", "raw 6"):
        assert part in text, (part, text)
    status = window.status.text()
    for part in ("tiny-test", "CPUExecutionProvider", window.address, "series 3"):
        assert part in status, (part, status)
    assert window.fps_out.getData()[1][-1] == pytest.approx(149.5)
    assert window.latency_p99.getData()[1][-1] == pytest.approx(7.5)


def test_pause_freezes_the_picture_while_frames_keep_arriving(qtbot, daemon, window):
    pub = daemon[0]
    connect(qtbot, pub, window)
    pub.frame(RAW, DENOISED, image_id=0)
    qtbot.waitUntil(lambda: shown_id(window) == (1, 0), timeout=3000)
    before = screen_grey(window, window.raw_panel, 16, 16)

    qtbot.keyClick(window, QtCore.Qt.Key.Key_Space)
    assert window.paused and window.banner.isVisible() and "paused" in window.banner.text()
    received = window.buffer.counts["denoised"]
    inverted = (RAW.max() + RAW.min() - RAW).astype("<u2")
    for i in range(1, 21):
        pub.frame(inverted, 1.0 - DENOISED, image_id=i)
    qtbot.waitUntil(lambda: window.buffer.counts["denoised"] == received + 20, timeout=3000)
    qtbot.wait(200)  # several draw ticks
    assert shown_id(window) == (1, 0)
    np.testing.assert_array_equal(window.raw_panel.image.image, RAW.astype(np.float32))
    assert screen_grey(window, window.raw_panel, 16, 16) == before

    qtbot.keyClick(window, QtCore.Qt.Key.Key_Space)
    assert not window.paused
    qtbot.waitUntil(lambda: shown_id(window) == (1, 20), timeout=3000)
    np.testing.assert_array_equal(window.raw_panel.image.image, inverted.astype(np.float32))


def test_burst_of_1000_frames_ends_on_the_newest_within_a_few_hundred_ms(qtbot, daemon, window):
    pub = daemon[0]
    connect(qtbot, pub, window)
    rng = np.random.default_rng(0)
    raws = rng.integers(0, 1000, (8, SIZE, SIZE), dtype=np.uint16)
    drawn_before = window.frames_drawn
    finished = []

    def burst() -> None:  # from another thread, so the window keeps drawing while frames pour in
        for i in range(1000):
            pub.frame(raws[i % 8], DENOISED, series_id=2, image_id=i)
        finished.append(time.monotonic())

    sender = threading.Thread(target=burst)
    sender.start()
    qtbot.waitUntil(lambda: not sender.is_alive(), timeout=10000)
    qtbot.waitUntil(lambda: shown_id(window) == (2, 999), timeout=3000)
    lag = time.monotonic() - finished[0]
    assert lag < 0.5, f"display reached the newest frame {lag * 1e3:.0f} ms after the burst"
    np.testing.assert_array_equal(window.raw_panel.image.image, raws[999 % 8].astype(np.float32))
    assert window.frames_drawn - drawn_before < 1000  # older frames were dropped, not queued


def test_waiting_state_appears_and_clears_when_the_daemon_restarts(qtbot, daemon, window):
    assert window.waiting and "waiting for stream" in window.banner.text()  # nothing yet
    connect(qtbot, daemon[0], window)
    daemon[0].frame(RAW, DENOISED, series_id=1, image_id=0)
    qtbot.waitUntil(lambda: not window.waiting and not window.banner.isVisible(), timeout=3000)

    daemon.pop().close()  # the daemon goes away
    qtbot.waitUntil(lambda: window.waiting and window.banner.isVisible(), timeout=5000)
    assert "waiting for stream" in window.banner.text() and window.address in window.banner.text()
    assert window.receiver.is_alive()

    restarted = FakeDaemon(window.address)  # same address: the SUB socket reconnects by itself
    daemon.append(restarted)

    def back() -> bool:
        restarted.frame(RAW, DENOISED, series_id=2, image_id=0)
        QtCore.QThread.msleep(20)
        return shown_id(window) == (2, 0)

    qtbot.waitUntil(back, timeout=5000)
    qtbot.waitUntil(lambda: not window.waiting and not window.banner.isVisible(), timeout=3000)


def test_snapshot_saves_the_frames_on_screen_and_the_window(qtbot, daemon, window):
    pub = daemon[0]
    connect(qtbot, pub, window)
    pub.frame(RAW, DENOISED, series_id=4, image_id=11)
    qtbot.waitUntil(lambda: shown_id(window) == (4, 11), timeout=3000)
    qtbot.keyClick(window, QtCore.Qt.Key.Key_S)
    qtbot.waitUntil(lambda: len(list(window.snapshot_dir.glob("*"))) == 3, timeout=3000)
    raw_tif, = window.snapshot_dir.glob("*-s4-i11-raw.tif")
    den_tif, = window.snapshot_dir.glob("*-s4-i11-denoised.tif")
    png, = window.snapshot_dir.glob("*-s4-i11-window.png")
    np.testing.assert_array_equal(tifffile.imread(raw_tif), RAW)
    assert tifffile.imread(raw_tif).dtype == RAW.dtype
    np.testing.assert_array_equal(tifffile.imread(den_tif), DENOISED)
    image = QtGui.QImage(str(png))
    assert image.width() == window.width() and image.height() == window.height()


def test_levels_toggle_and_colour_map(qtbot, daemon, window):
    pub = daemon[0]
    connect(qtbot, pub, window)
    for i in range(FIXED_LEVEL_FRAMES):  # one at a time: fixed levels come from the first frames drawn
        pub.frame(RAW, DENOISED, image_id=i)
        qtbot.waitUntil(lambda i=i: shown_id(window) == (1, i), timeout=3000)
    fixed = window.raw_panel.levels()
    pub.frame(RAW * 3, DENOISED, image_id=FIXED_LEVEL_FRAMES)  # brighter: fixed levels stay
    qtbot.waitUntil(lambda: shown_id(window) == (1, FIXED_LEVEL_FRAMES), timeout=3000)
    assert window.raw_panel.levels() == fixed
    qtbot.keyClick(window, QtCore.Qt.Key.Key_A)
    assert window.auto_levels
    pub.frame(RAW * 3, DENOISED, image_id=FIXED_LEVEL_FRAMES + 1)
    qtbot.waitUntil(lambda: shown_id(window) == (1, FIXED_LEVEL_FRAMES + 1), timeout=3000)
    assert window.raw_panel.levels()[1] > fixed[1] * 2

    window.colormap_box.setCurrentText("viridis")
    lut = window.raw_panel.image.lut
    lut = lut(window.raw_panel.image.image) if callable(lut) else lut
    assert lut is not None and len(lut) == 256
    red, green, blue = screen_grey(window, window.raw_panel, 48, 48)
    assert not red == green == blue


def red_rings_near(win: MonitorWindow, xy, box: int = 12) -> int:
    """Overlay-coloured screen pixels within ``box`` px of atom position ``[x, y]`` on the denoised image."""
    scene = win.denoised_panel.image.mapToScene(QtCore.QPointF(xy[0] + 0.5, xy[1] + 0.5))
    at = win.images.mapFromScene(scene)
    image = win.images.grab().toImage()
    count = 0
    for dx in range(-box, box + 1):
        for dy in range(-box, box + 1):
            c = image.pixelColor(at.x() + dx, at.y() + dy)
            count += c.red() > 180 and c.green() < 140 and c.blue() < 140
    return count


def test_atoms_overlay_follows_the_frame_on_screen_and_toggles(qtbot, daemon, window):
    pub = daemon[0]
    connect(qtbot, pub, window)
    first = np.array([[10.0, 12.0], [40.0, 20.0], [50.0, 50.0]], np.float32)
    pub.frame(RAW, DENOISED, image_id=0)
    pub.atoms(first, image_id=0)
    pub.atoms([[5.0, 5.0]], series_id=9, image_id=0)  # another series: never drawn here
    qtbot.waitUntil(lambda: window.atoms_shown is not None and window.atoms_shown.image_id == 0, timeout=3000)
    np.testing.assert_allclose(np.array(window.atoms_overlay.getData()).T, first + 0.5)  # on pixel centres
    assert window.atoms_overlay.isVisible() and window.atoms_box.isChecked()
    def shown_line() -> str:
        return window.counters.text().splitlines()[-1]

    qtbot.waitUntil(lambda: shown_line().startswith("shown") and "atoms 3" in shown_line(), timeout=3000)
    for xy in first:  # the rings are on screen, over the atoms (grey image: red is only the overlay)
        assert red_rings_near(window, xy) > 5, xy
    assert red_rings_near(window, (25.0, 40.0)) == 0  # and nowhere else

    # the next frame: until its atoms arrive, those of the frame before stand in
    pub.frame(RAW, DENOISED, image_id=1)
    qtbot.waitUntil(lambda: shown_id(window) == (1, 1), timeout=3000)
    assert window.atoms_shown.image_id == 0
    qtbot.waitUntil(lambda: "image 1" in shown_line() and "atoms 3 (of image 0)" in shown_line(), timeout=3000)
    second = np.array([[30.0, 30.0]], np.float32)
    pub.atoms(second, image_id=1)
    qtbot.waitUntil(lambda: window.atoms_shown.image_id == 1, timeout=3000)
    np.testing.assert_allclose(np.array(window.atoms_overlay.getData()).T, second + 0.5)

    qtbot.keyClick(window, QtCore.Qt.Key.Key_O)  # off: the checkbox follows the key
    assert not window.show_atoms and not window.atoms_box.isChecked() and not window.atoms_overlay.isVisible()
    qtbot.wait(50)
    assert red_rings_near(window, second[0]) == 0
    window.atoms_box.setChecked(True)  # on again, from the checkbox
    assert window.show_atoms and window.atoms_overlay.isVisible()
    qtbot.waitUntil(lambda: red_rings_near(window, second[0]) > 5, timeout=3000)

    # a frame with no atoms found clears the overlay
    pub.frame(RAW, DENOISED, image_id=2)
    pub.atoms(np.zeros((0, 2)), image_id=2)
    qtbot.waitUntil(lambda: window.atoms_shown is not None and window.atoms_shown.image_id == 2, timeout=3000)
    assert len(window.atoms_overlay.getData()[0]) == 0


def test_atom_count_plot_gets_one_point_per_frame(qtbot, daemon, window):
    pub = daemon[0]
    connect(qtbot, pub, window)
    counts = [3, 5, 4, 0, 6]
    for i, k in enumerate(counts):
        pub.atoms(np.full((k, 2), 8.0), series_id=2, image_id=i)
    pub.stats(atoms_frames=5, atoms_skipped=0, atoms_failed=0, atoms_last=6, atoms_ms_p50=0.61, atoms_ms_p99=1.2)

    def plotted() -> bool:
        _, ys = window.atoms_points.getData()
        return ys is not None and len(ys) == len(counts) and "finder p50 0.61 ms" in window.counters.text()

    qtbot.waitUntil(plotted, timeout=3000)
    np.testing.assert_array_equal(window.atoms_points.getData()[1], counts)
    assert window.atoms_line.getData()[1][-1] == pytest.approx(np.mean(counts))
    assert "atoms 5" in window.counters.text()  # messages received by the viewer


def test_atoms_note_comes_with_frames_without_atoms_and_goes_when_atoms_arrive(qtbot, daemon, window):
    pub = daemon[0]
    connect(qtbot, pub, window)
    assert not window.no_atoms  # nothing yet: nothing to say
    sent = iter(range(10**6))

    def frames_only() -> bool:  # frames and stats, as from serve without --atoms
        i = next(sent)
        pub.frame(RAW, DENOISED, image_id=i)
        if i % 10 == 0:
            pub.stats()
        QtCore.QThread.msleep(20)
        return window.no_atoms

    t0 = time.monotonic()
    qtbot.waitUntil(frames_only, timeout=8000)
    assert time.monotonic() - t0 >= NO_ATOMS_AFTER_S - 0.1  # not before a couple of seconds of frames
    qtbot.waitUntil(window.atoms_note.isVisible, timeout=1000)  # on screen after the toolbar's next layout
    assert window.atoms_note.text().strip() == NO_ATOMS_NOTE
    assert "serve --atoms" in NO_ATOMS_NOTE

    pub.stats(atoms_frames=1, atoms_skipped=0, atoms_failed=0, atoms_last=1, atoms_ms_p50=0.5)
    pub.atoms([[8.0, 8.0]], image_id=next(sent))  # a daemon with atom finding after all
    qtbot.waitUntil(lambda: not window.no_atoms and not window.atoms_note.isVisible(), timeout=3000)


def pixels_near(win: MonitorWindow, xy, match, box: int = 12) -> int:
    """Screen pixels within ``box`` px of image position ``[x, y]`` on the denoised panel for which
    ``match(r, g, b)`` holds (one grab of the image widget)."""
    scene = win.denoised_panel.image.mapToScene(QtCore.QPointF(xy[0] + 0.5, xy[1] + 0.5))
    at = win.images.mapFromScene(scene)
    image = win.images.grab().toImage()
    count = 0
    for dx in range(-box, box + 1):
        for dy in range(-box, box + 1):
            c = image.pixelColor(at.x() + dx, at.y() + dy)
            count += bool(match(c.red(), c.green(), c.blue()))
    return count


def close_to(rgb, tol: int = 30):
    return lambda r, g, b: abs(r - int(rgb[0])) <= tol and abs(g - int(rgb[1])) <= tol and abs(b - int(rgb[2])) <= tol


def coloured(r, g, b) -> bool:
    """Not grey: the image is drawn with the grey map, so any saturated pixel is an overlay."""
    return max(r, g, b) - min(r, g, b) > 60


def test_rings_are_coloured_by_evidence_and_the_weak_ones_hide(qtbot, daemon, window):
    from livedenoise.viewer._overlay import PALETTE, evidence_index

    pub = daemon[0]
    connect(qtbot, pub, window)
    xy = np.array([[12.0, 12.0], [48.0, 12.0], [12.0, 48.0], [48.0, 48.0]], np.float32)
    evidence = np.array([-1.0, 2.0, 4.0, 20.0], np.float32)  # two weak (below 3), two supported
    pub.frame(RAW, DENOISED, image_id=0)
    pub.atoms(xy, image_id=0, evidence=evidence, track_ids=np.arange(4), weak=2, weak_z=3.0)
    qtbot.waitUntil(lambda: window.atoms_shown is not None and window.atoms_shown.evidence is not None, timeout=3000)
    qtbot.waitUntil(lambda: "atoms 4 (2 weak)" in window.counters.text().splitlines()[-1], timeout=3000)
    qtbot.waitUntil(window.evidence_legend.isVisible, timeout=3000)  # the colour key, with evidence only

    colours = PALETTE[evidence_index(evidence, 3.0)]
    weak_blue, strong_green = colours[:2], colours[2:]
    assert all(int(c[2]) > int(c[1]) for c in weak_blue), "weak atoms: the magenta ramp"
    assert all(int(c[1]) > int(c[0]) for c in strong_green), "supported atoms: the cyan to green ramp"
    assert len({tuple(c) for c in colours}) == 4, "each evidence level its own colour"
    for pos, colour in zip(xy, colours, strict=True):
        assert pixels_near(window, pos, close_to(colour)) > 5, (pos, colour)
        others = [c for c in colours if tuple(c) != tuple(colour)]
        assert all(pixels_near(window, pos, close_to(c, 12)) == 0 for c in others), (pos, colour)

    qtbot.keyClick(window, QtCore.Qt.Key.Key_W)  # hide the weak ones: the box follows the key
    assert not window.show_weak and not window.weak_box.isChecked()
    assert window.atoms_drawn.tolist() == [False, False, True, True]
    np.testing.assert_allclose(np.array(window.atoms_overlay.getData()).T, xy[2:] + 0.5)
    qtbot.waitUntil(lambda: pixels_near(window, xy[0], coloured) == 0, timeout=3000)
    assert pixels_near(window, xy[1], coloured) == 0
    for pos, colour in zip(xy[2:], colours[2:], strict=True):
        assert pixels_near(window, pos, close_to(colour)) > 5
    window.weak_box.setChecked(True)  # back, from the box
    assert window.show_weak and len(window.atoms_overlay.getData()[0]) == 4
    qtbot.waitUntil(lambda: pixels_near(window, xy[0], close_to(colours[0])) > 5, timeout=3000)


def test_trails_follow_the_tracks_on_screen_and_stay_bounded(qtbot, daemon, window):
    pub = daemon[0]
    connect(qtbot, pub, window)
    n = 90  # more frames than the buffer keeps atoms messages for
    for i in range(n):
        walker = [8.0 + 0.5 * (i % 80), 20.0]  # track 0 walks right along row 20
        fixed = [50.0, 50.0]  # track 1: seen in the first frames only, then it ends
        weak = [30.0 + 0.2 * (i % 80), 40.0]  # track 7: weakly supported
        xy, ids, ev = [walker, weak], [0, 7], [12.0, 1.0]
        if i < 20:
            xy, ids, ev = [*xy, fixed], [*ids, 1], [*ev, 12.0]
        pub.frame(RAW, DENOISED, image_id=i)
        pub.atoms(np.array(xy), image_id=i, evidence=np.array(ev), track_ids=np.array(ids), weak_z=3.0)
    last = n - 1
    qtbot.waitUntil(lambda: window.atoms_shown is not None and window.atoms_shown.image_id == last, timeout=5000)
    assert window.buffer.counts["atoms"] >= n
    kept = window.buffer.atoms_history(1, last, 10**6)
    assert 0 < len(kept) <= 64, "the atoms messages kept are bounded, however many came"

    xs, ys = window.trails.getData()
    points = np.stack([xs, ys], axis=1) - 0.5
    steps = np.arange(last - TRAIL_FRAMES + 1, last + 1) % 80
    expected = np.concatenate([
        np.stack([8.0 + 0.5 * steps, np.full(TRAIL_FRAMES, 20.0)], axis=1),  # track 0, oldest first
        np.stack([30.0 + 0.2 * steps, np.full(TRAIL_FRAMES, 40.0)], axis=1),  # track 7
    ])
    np.testing.assert_allclose(points, expected, atol=1e-5)  # the last TRAIL_FRAMES positions; track 1 ended
    connect_mask = np.asarray(window.trails.opts["connect"])
    assert connect_mask.tolist() == [True] * (TRAIL_FRAMES - 1) + [False] + [True] * (TRAIL_FRAMES - 1) + [False]

    def yellow(r, g, b) -> bool:
        return r > 150 and g > 120 and b < 60 and r - b > 100

    mid_walker = expected[TRAIL_FRAMES // 2 - 3]  # on the trail, clear of the newest ring
    qtbot.waitUntil(lambda: pixels_near(window, mid_walker, yellow, box=4) > 0, timeout=3000)
    assert pixels_near(window, (50.0, 50.0), yellow) == 0  # the ended track left nothing

    window.set_show_weak(False)  # the weak track's trail goes with its ring
    xs, ys = window.trails.getData()
    np.testing.assert_allclose(np.stack([xs, ys], axis=1) - 0.5, expected[:TRAIL_FRAMES], atol=1e-5)


def test_hop_marker_appears_and_fades_out(qtbot, daemon, window):
    pub = daemon[0]
    connect(qtbot, pub, window)
    pub.frame(RAW, DENOISED, image_id=1)
    pub.atoms(np.array([[28.0, 10.0]]), image_id=1, evidence=np.array([9.0]), track_ids=np.array([5]))
    qtbot.waitUntil(lambda: shown_id(window) == (1, 1), timeout=3000)
    before, after = np.array([[4.0, 10.0]]), np.array([[28.0, 10.0]])  # over the dark quadrant
    pub.hops([9], [[5.0, 5.0]], [[9.0, 5.0]], series_id=2, image_id=1)  # another series: never drawn here
    sent = time.monotonic()
    pub.hops([5], before, after, image_id=1)
    qtbot.waitUntil(lambda: len(window.hop_markers) == 1, timeout=3000)
    drawn_before, drawn_after, alpha = window.hop_markers.markers()
    np.testing.assert_allclose(drawn_before, before + 0.5)
    np.testing.assert_allclose(drawn_after, after + 0.5)
    assert 0 < alpha[0] <= 1

    def orange(r, g, b) -> bool:  # the hop colour at any opacity over black
        return r > 50 and 0.25 * r < g < 0.65 * r and b < 0.25 * r

    middle = (before[0] + after[0]) / 2
    assert pixels_near(window, middle, orange, box=3) > 0, "the arrow is on screen"
    assert pixels_near(window, (9.0, 24.0), orange) == 0  # nowhere else (the dark quadrant too)
    seen = [float(alpha[0])]

    def faded() -> bool:  # sample the opacity until the marker is gone
        if len(window.hop_markers):
            seen.append(float(window.hop_markers.markers()[2][0]))
            return False
        return True

    qtbot.waitUntil(faded, timeout=3000)
    assert seen == sorted(seen, reverse=True), "the arrow only fades"
    assert any(0 < a < seen[0] for a in seen[1:]), f"no faded opacity seen on the way out: {seen}"
    assert time.monotonic() - sent >= HOP_FADE_S * 0.9
    qtbot.waitUntil(lambda: "hops 2" in window.counters.text(), timeout=3000)  # both messages heard
    qtbot.waitUntil(lambda: pixels_near(window, middle, orange, box=3) == 0, timeout=1000)
    assert tuple(HOP_COLOR) and orange(*HOP_COLOR)


def test_atoms_plot_is_split_into_supported_and_weak(qtbot, daemon, window):
    pub = daemon[0]
    connect(qtbot, pub, window)
    counts, weak = [6, 5, 7, 4], [1, 0, 3, 4]
    for i, (k, w) in enumerate(zip(counts, weak, strict=True)):
        ev = np.array([1.0] * w + [8.0] * (k - w))
        pub.atoms(np.full((k, 2), 8.0), series_id=2, image_id=i, evidence=ev, track_ids=np.arange(k), weak=w, weak_z=3.0)
    pub.atoms(np.full((3, 2), 8.0), series_id=2, image_id=len(counts))  # a daemon without evidence: all counted
    pub.atoms(np.full((2, 2), 8.0), series_id=2, image_id=len(counts) + 1, evidence=np.array([np.nan, 5.0]))

    def plotted() -> bool:
        _, ys = window.atoms_points.getData()
        return ys is not None and len(ys) == len(counts) + 2

    qtbot.waitUntil(plotted, timeout=3000)
    np.testing.assert_array_equal(window.atoms_points.getData()[1], [5, 5, 4, 0, 3, 1])
    np.testing.assert_array_equal(window.atoms_weak_points.getData()[1], [*weak, 1])  # NaN evidence is weak
    assert len(window.atoms_weak_points.getData()[0]) == len(counts) + 1  # no weak point without evidence
    assert window.atoms_weak_line.getData()[1][-1] == pytest.approx(np.mean([*weak, 1]))


def test_stream_buffer_keeps_recent_hops_and_counts_bad_ones():
    buf = StreamBuffer(hops_kept=4)
    for i in range(6):
        buf.ingest_parts(encode_hops({"series_id": 1, "image_id": i + 1}, np.array([i]), np.zeros((1, 2)),
                                     np.ones((1, 2)), np.array([i])), now=float(i))
    assert buf.hops_heard == 6 and buf.counts["hops"] == 6
    recent = buf.recent_hops(1, now=5.5, span=2.0)  # received at 4 and 5
    assert [(age, h.image_id) for age, h in recent] == [(1.5, 5), (0.5, 6)]
    assert buf.recent_hops(2, now=5.5, span=10.0) == []
    assert len(buf.recent_hops(1, now=5.5, span=100.0)) == 4  # no more than kept
    buf.ingest_parts(encode_published(TOPIC_HOPS, {"series_id": 1, "image_id": 9, "count": 1, "track_ids": b"xy"}))
    assert buf.counts["malformed"] == 1 and buf.hops_heard == 6


def test_view_of_a_live_daemon_with_evidence_shows_colours_trails_and_hops(qtbot, tmp_path, replayer, daemon_factory):
    """replay --synthetic (a movie with hops) -> serve --atoms (evidence and tracks, the shipped rt model) -> view:
    the real chain, as in the demo."""
    from livedenoise.daemon import AtomsConfig

    detector = replayer(synthetic=True, fps=40, size=128)
    daemon = daemon_factory(
        model=RT_MODEL, source=detector.endpoint, stats_interval=0.2, atoms=AtomsConfig(),
        engine=EngineConfig(threads=1, provider="cpu", shapes=()),
    )
    detector.start()
    win = MonitorWindow(daemon.publish_address, snapshot_dir=tmp_path)
    qtbot.addWidget(win)
    try:
        win.show()
        qtbot.waitExposed(win)

        def annotated() -> bool:
            atoms = win.atoms_shown
            return atoms is not None and atoms.evidence is not None and atoms.track_ids is not None and len(atoms) > 0

        qtbot.waitUntil(annotated, timeout=20000)
        assert len(win.atoms_overlay.getData()[0]) == len(win.atoms_shown)  # every atom ringed (weak ones shown)
        def trailing() -> bool:  # more trail points than atoms: some track has a past on screen
            xs = win.trails.getData()[0]
            return xs is not None and len(xs) > len(win.atoms_shown)

        qtbot.waitUntil(trailing, timeout=10000)
        qtbot.waitUntil(lambda: win.buffer.hops_heard > 0 and len(win.hop_markers) > 0, timeout=20000)
        qtbot.waitUntil(lambda: any(line.startswith("atoms") and "weak" in line and "tracks" in line
                                    for line in win.counters.text().splitlines()), timeout=5000)
        qtbot.waitUntil(win.evidence_legend.isVisible, timeout=3000)
        assert not win.no_atoms
        assert win.width() == 1280, "the colour key and the weak box fit the window's width"
    finally:
        win.close()


def test_view_of_a_live_daemon_without_atoms_says_so(qtbot, tmp_path, replayer, daemon_factory, conv_model):
    """serve (no --atoms) -> view: after a couple of seconds of frames, the atoms control says why it stays empty."""
    detector = replayer(synthetic=True, fps=50, size=SIZE)
    daemon = daemon_factory(model=conv_model, source=detector.endpoint, stats_interval=0.2)
    detector.start()
    win = MonitorWindow(daemon.publish_address, snapshot_dir=tmp_path)
    qtbot.addWidget(win)
    try:
        win.show()
        qtbot.waitExposed(win)
        qtbot.waitUntil(lambda: win.frame is not None, timeout=15000)
        assert win.atoms_box.isChecked() and not win.no_atoms
        qtbot.waitUntil(lambda: win.no_atoms, timeout=10000)
        qtbot.waitUntil(win.atoms_note.isVisible, timeout=1000)
        assert "serve --atoms" in win.atoms_note.text()
        assert win.buffer.counts["atoms"] == 0 and win.buffer.counts["denoised"] > 50
    finally:
        win.close()


def test_stream_buffer_pairs_raw_and_denoised_of_one_frame():
    buf = StreamBuffer()
    frame = np.zeros((4, 4), np.float32)

    def send(topic, image_id):
        buf.ingest_parts(encode_published(topic, {"series_id": 1, "image_id": image_id, "css": 0.5}, frame + image_id))

    send(TOPIC_DENOISED, 0)
    send(TOPIC_RAW, 0)
    send(TOPIC_DENOISED, 1)  # its raw is not here yet: the newest complete pair is 0
    pair = buf.take_frames()
    assert (pair.image_id, pair.raw[0, 0], pair.denoised[0, 0]) == (0, 0, 0)
    send(TOPIC_RAW, 1)
    pair = buf.take_frames()
    assert (pair.image_id, pair.raw[0, 0], pair.denoised[0, 0]) == (1, 1, 1)
    buf.ingest_parts([b"denoised", b"\xc1not msgpack", b"x"])
    assert buf.counts["malformed"] == 1 and buf.take_frames() is None


def run_view(address: str, *args: str, **env_changes) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    return subprocess.run(
        [sys.executable, "-m", "livedenoise", "view", "--connect", address, *args],
        env={**env, **env_changes}, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize(
    ("address", "env", "message"),
    [
        ("tcp://127.0.0.1:9", {}, "error: no display"),
        ("nonsense", {"QT_QPA_PLATFORM": "offscreen"}, "error: cannot connect to 'nonsense'"),
    ],
    ids=["no-display", "bad-address"],
)
def test_view_fails_with_one_clear_line(address, env, message):
    proc = run_view(address, **env)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message), proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("env", "usable"),
    [({}, False), ({"QT_QPA_PLATFORM": "offscreen"}, True), ({"DISPLAY": ":0"}, True), ({"WAYLAND_DISPLAY": "w"}, True)],
    ids=["nothing", "qt-platform", "x11", "wayland"],
)
def test_view_and_serve_view_share_one_display_check(monkeypatch, env, usable):
    """`view` (check_display) and `serve --view`/`demo` (launch_viewer) ask the same function, and
    both take QT_QPA_PLATFORM as a platform Qt can open the window on."""
    from livedenoise.cli._serve import launch_viewer, stop_child
    from livedenoise.errors import LivedenoiseError
    from livedenoise.viewer import check_display, viewer_unavailable_reason

    monkeypatch.setattr(sys, "platform", "linux")
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if not usable:
        assert viewer_unavailable_reason().startswith("no display")
        with pytest.raises(LivedenoiseError, match=r"no display.*QT_QPA_PLATFORM=offscreen"):
            check_display()
        assert launch_viewer("tcp://127.0.0.1:9") is None
        return
    assert viewer_unavailable_reason() is None
    check_display()
    if "QT_QPA_PLATFORM" not in env:
        return  # no X server or compositor here to start a real viewer on
    ctx = zmq.Context()
    xpub = ctx.socket(zmq.XPUB)  # sees the viewer's subscription: the child really runs
    xpub.setsockopt(zmq.LINGER, 0)
    xpub.bind("tcp://127.0.0.1:*")
    proc = launch_viewer(xpub.getsockopt_string(zmq.LAST_ENDPOINT))
    try:
        assert proc is not None
        assert xpub.poll(30000), "the viewer serve --view started never subscribed"
    finally:
        stop_child(proc, timeout=15)
        xpub.close()
        ctx.term()
    assert proc.returncode == 0


def test_view_screenshot_command_writes_the_window_and_quits(tmp_path, replayer, daemon_factory, conv_model):
    """`livedenoise view --screenshot PATH --after S` on a real daemon: how docs/monitor.png is made."""
    detector = replayer(synthetic=True, fps=50, size=SIZE)
    daemon = daemon_factory(model=conv_model, source=detector.endpoint, stats_interval=0.5)
    detector.start()
    out = tmp_path / "shot.png"
    proc = run_view(daemon.publish_address, "--screenshot", str(out), "--after", "3", QT_QPA_PLATFORM="offscreen")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"wrote {out}", proc.stdout
    image = QtGui.QImage(str(out))
    assert (image.width(), image.height()) == (1280, 860)
    assert image.pixelColor(image.width() // 2, image.height() // 2).isValid()

    proc = run_view("tcp://127.0.0.1:9", "--screenshot", str(tmp_path / "no" / "shot.png"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: cannot write screenshot"), proc.stderr


# --------------------------------------------------------------------------- screenshots

DEFAULT_MODEL = REPO / "livedenoise" / "models" / "default.onnx"
RT_MODEL = REPO / "livedenoise" / "models" / "rt.onnx"  # the demo's model


def gaussian_model(path: Path) -> Path:
    """A real ONNX denoiser for the screenshot until the default model ships: a 9x9 Gaussian
    (sigma 1.5 px) convolution + tanh, with a model card mapping background to dark and atoms to bright."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from livedenoise.engine import INPUT_NAME, METADATA_KEY, OUTPUT_NAME, ModelCard, Normalisation

    grid = np.arange(-4, 5, dtype=np.float32)
    kernel = np.exp(-(grid[:, None] ** 2 + grid[None, :] ** 2) / (2 * 1.5**2))
    kernel = (kernel / kernel.sum())[None, None].astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", [INPUT_NAME, "k"], ["blur"], pads=[4, 4, 4, 4]),
            helper.make_node("Tanh", ["blur"], [OUTPUT_NAME]),
        ],
        "gaussian",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [numpy_helper.from_array(kernel, "k")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    card = ModelCard(preset="gaussian-sigma1.5", normalisation=Normalisation(offset=0.9, scale=1.5))
    helper.set_model_props(model, {METADATA_KEY: card.to_json()})
    onnx.save(model, str(path))
    return path


@pytest.mark.slow
def test_screenshot_of_a_replayed_synthetic_stream(qtbot, tmp_path, replayer, daemon_factory):
    """replay --synthetic -> serve -> view, as an operator sees it, grabbed into tmp_path (docs/monitor.png
    is made by the command in docs/viewer.md, never by a test)."""
    model = DEFAULT_MODEL if DEFAULT_MODEL.exists() else gaussian_model(tmp_path / "gaussian.onnx")
    replay = replayer(synthetic=True, fps=100, size=128)
    daemon = daemon_factory(model=model, source=replay.endpoint, stats_interval=0.5, engine=EngineConfig(threads=1, provider="cpu", shapes=()))
    replay.start()
    win = MonitorWindow(daemon.publish_address, snapshot_dir=tmp_path)
    qtbot.addWidget(win)
    try:
        win.resize(1280, 860)
        win.show()
        qtbot.waitExposed(win)
        # a few seconds of steady streaming, so the plots show more than the start-up
        qtbot.waitUntil(lambda: win.buffer.elapsed() > 8 and len(win.buffer.history().css) >= 250, timeout=30000)
        qtbot.wait(300)  # a last plot refresh
        assert not win.waiting and win.frame is not None
        assert win.frame.raw is not None and win.frame.denoised is not None
        assert "provider" in win.status.text() and daemon.publish_address in win.status.text()
        out = tmp_path / "monitor.png"
        assert win.grab().save(str(out))
        assert QtGui.QImage(str(out)).size() == win.size()
    finally:
        replay.close(5)
        win.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_view_command_shows_the_stream_and_quits_cleanly_on_a_signal(sig):
    """The real `livedenoise view` process: it subscribes, and Ctrl-C / SIGTERM end it with status 0."""
    ctx = zmq.Context()
    xpub = ctx.socket(zmq.XPUB)  # sees the viewer's subscriptions: then the window is being built
    xpub.setsockopt(zmq.LINGER, 0)
    address = bind_socket(xpub)
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "livedenoise", "view", "--connect", address],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert xpub.poll(30000), "the viewer never subscribed"
        subscription = xpub.recv()
        assert subscription[0] == 1 and subscription[1:] in (TOPIC_RAW, TOPIC_DENOISED, TOPIC_STATS, b"atoms")
        for i in range(20):  # a few frames while the window comes up
            xpub.send_multipart(encode_published(TOPIC_RAW, {"series_id": 1, "image_id": i}, RAW))
            time.sleep(0.05)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        xpub.close()
        ctx.term()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
