"""The live monitor window: raw and denoised side by side, CSS, atom count, throughput and latency over time.

Drawing follows pyqtgraph's fast path: only the newest frame is drawn, on a timer (60 Hz), as a
C-contiguous float32 array with explicit levels and a 256-entry lookup table (none for grey);
histograms, counters and the status line refresh at 5 Hz, the rolling plots at 2 Hz. The image
titles stay fixed (a changing title re-lays out the whole scene); per-frame figures go to the
counters line. Frames that arrive faster than that are dropped in
:class:`~livedenoise.viewer.StreamBuffer`, so the window never lags.

With ``serve --atoms``, the atoms of the frame on screen are ringed over the denoised image in the
colour of their evidence, with their tracks' trails and fading hop arrows (:mod:`._overlay_draw`).
A daemon started without ``--atoms`` publishes none: after NO_ATOMS_AFTER_S seconds of frames without
any, a note next to the box says so, rather than leave an empty overlay unexplained.

The daemon's guard (issues 19 and 24: ``guard`` in ``stats``) is shown where the operator looks:
while it says the model ``does not fit`` the stream (a causal mean and blur beats it, measured
without ground truth), an amber bar over the images carries its message ("a causal filter ...
beats this model by 1.3 dB on this stream; this model expects about N atoms per nm² ..."); it goes
as soon as the stats say otherwise. The score itself, the model's and the best causal filter's
gain over raw in dB, is plotted beside CSS, and the counters get a ``guard`` line with the
verdict, the scores and the unexplained signal per frame (:mod:`._text`).

The window is this class and three mixins: :mod:`._layout` (widgets, plots), :mod:`._overlay_draw`
(the atoms drawn) and :mod:`._text` (banners, counters, status bar).
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

import numpy as np
import tifffile
from pyqtgraph.Qt import QtCore, QtGui, QtWidgets

from ._layout import PLOT_SPAN_S, Layout
from ._overlay_draw import AtomsOverlay
from ._panels import FIXED_LEVEL_FRAMES, colormap
from ._receiver import FramePair, Receiver, StreamBuffer
from ._text import WAITING_AFTER_S, TextLines

__all__ = ["FIXED_LEVEL_FRAMES", "MonitorWindow"]

DRAW_HZ = 60
INFO_HZ = 5  # histograms, counters, status line, waiting banner
PLOT_HZ = 2  # the rolling plots (each refresh repaints six axes: the costliest thing drawn)


class MonitorWindow(Layout, AtomsOverlay, TextLines, QtWidgets.QMainWindow):
    """The live monitor for one daemon (``livedenoise view --connect ADDRESS``).

    Parameters
    ----------
    address:
        The daemon's publish address.
    snapshot_dir:
        Where snapshots (raw and denoised TIFF, window PNG) are written.
    """

    _frames_waiting = QtCore.Signal()  # emitted by the receiver thread; queued to the GUI thread

    def __init__(self, address: str, snapshot_dir: str | Path = ".") -> None:
        super().__init__()
        self.address = address
        self.snapshot_dir = Path(snapshot_dir)
        self.setWindowTitle(f"livedenoise view · {address}")
        self.resize(1280, 860)

        self.buffer = StreamBuffer()
        self.frame: FramePair | None = None  # on screen
        self.frames_drawn = 0
        self.paused = False
        self.auto_levels = False
        self._dirty = False
        self._draws: deque[float] = deque(maxlen=4 * DRAW_HZ)
        self._display_fps: deque[tuple[float, float]] = deque(maxlen=int(PLOT_SPAN_S) * 4)
        self._histograms_at = 0
        self.show_atoms = True
        self.show_weak = True
        self.atoms_shown = None  # the AtomsMessage drawn over the denoised frame, if any
        self.atoms_drawn = np.zeros(0, bool)  # which of its atoms have a ring (weak ones may be hidden)
        self._overlay_key: tuple | None = None
        self._overlay_drawn: tuple | None = None
        self._hops_key: tuple | None = None
        self._hops_live = False  # a hop marker is still fading: redraw the markers at HOP_FADE_HZ
        self._hops_next = 0.0  # monotonic time of the next fading step
        self._atoms_heard = 0  # atoms messages counted at the last info tick
        self._no_atoms_since: float | None = None  # frames flowing, and no atoms message, since then

        self._frames_waiting.connect(self._on_frames_waiting)
        self.receiver = Receiver(address, self.buffer, notify=self._frames_waiting.emit)
        self.receiver.start()
        self.receiver.wait_ready()  # a bad address fails here, before any widget is built

        self._build_images()
        self._build_plots()
        self._build_controls()

        self._draw_timer = QtCore.QTimer(self, timerType=QtCore.Qt.TimerType.PreciseTimer)
        self._draw_timer.timeout.connect(self._draw)
        self._draw_timer.start(1000 // DRAW_HZ)
        self._info_timer = QtCore.QTimer(self)
        self._info_timer.timeout.connect(self._refresh_info)
        self._info_timer.start(1000 // INFO_HZ)
        self._plot_timer = QtCore.QTimer(self)
        self._plot_timer.timeout.connect(self._refresh_plots)
        self._plot_timer.start(1000 // PLOT_HZ)
        self._refresh_info()

    # ------------------------------------------------------------------ operator controls

    def set_paused(self, paused: bool) -> None:
        """Freeze the images (the stream, counters and plots go on); unpausing jumps to the newest frame."""
        self.paused = bool(paused)
        if self.pause_action.isChecked() != self.paused:
            self.pause_action.setChecked(self.paused)
        self._refresh_banner()

    def set_auto_levels(self, auto: bool) -> None:
        """Levels from every frame (auto) or fixed from the first frames of the series."""
        self.auto_levels = bool(auto)
        if self.auto_levels_action.isChecked() != self.auto_levels:
            self.auto_levels_action.setChecked(self.auto_levels)

    def reset_levels(self) -> None:
        for panel in self.panels:
            panel.reset_levels()
            if panel.shown is not None:
                panel.show(panel.shown, self.auto_levels)

    def set_colormap(self, name: str) -> None:
        cmap = colormap(name)
        for panel in self.panels:
            panel.hist.gradient.setColorMap(cmap)

    def snapshot(self) -> list[Path]:
        """Save the frames on screen as TIFF (as received: raw dtype, float32 denoised) and a PNG of the window.

        Returns the files written; a failure (disk full, no permission) is shown in the status bar.
        """
        frame = self.frame
        now = time.time()
        stem = time.strftime("livedenoise-%Y%m%d-%H%M%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"
        paths: list[Path] = []
        try:
            self.snapshot_dir.mkdir(parents=True, exist_ok=True)
            if frame is not None:
                stem += f"-s{frame.series_id}-i{frame.image_id}"
                for panel, header in ((self.raw_panel, frame.raw_header), (self.denoised_panel, frame.denoised_header)):
                    if panel.shown is not None:
                        path = self.snapshot_dir / f"{stem}-{panel.title}.tif"
                        meta = {k: v for k, v in header.items() if isinstance(v, int | float | str)}
                        tifffile.imwrite(path, panel.shown, metadata=meta)
                        paths.append(path)
            png = self.snapshot_dir / f"{stem}-window.png"
            if not self.grab().save(str(png)):
                raise OSError(f"cannot write {png}")
            paths.append(png)
        except OSError as exc:
            self.statusBar().showMessage(f"snapshot failed: {exc}", 10000)
            return paths
        self.statusBar().showMessage(f"snapshot saved: {self.snapshot_dir / stem}-*", 5000)
        return paths

    # ------------------------------------------------------------------ drawing

    @QtCore.Slot()
    def _on_frames_waiting(self) -> None:
        self._dirty = True

    def _draw(self) -> None:
        """Timer tick: draw the newest frame pair, if one arrived (skipped while paused), and the
        atoms of the frame on screen (also while paused: they may arrive after their frame)."""
        if not self.paused and self._dirty:
            self._dirty = False
            self._draw_frames()
        self._update_overlay()
        self._update_hops()

    def _draw_frames(self) -> None:
        frame = self.buffer.take_frames()
        if frame is None:
            return
        if self.frame is not None and frame.series_id != self.frame.series_id:
            for panel in self.panels:
                panel.reset_levels()
        for panel, data in ((self.raw_panel, frame.raw), (self.denoised_panel, frame.denoised)):
            if data is not None:
                panel.show(data, self.auto_levels)
        self.frame = frame
        self.frames_drawn += 1
        self._draws.append(time.monotonic())

    @property
    def waiting(self) -> bool:
        """Nothing received for WAITING_AFTER_S seconds (or ever)."""
        return self.buffer.idle_for() > WAITING_AFTER_S

    def display_fps(self, now: float | None = None) -> float:
        """Frames drawn during the last second."""
        now = time.monotonic() if now is None else now
        return float(sum(1 for t in self._draws if t > now - 1.0))

    def _refresh_info(self) -> None:
        """INFO_HZ: waiting state, histograms, counters, status line."""
        now = time.monotonic()
        self._refresh_banner()
        self._refresh_guard()
        self._refresh_atoms_note(now)
        with_evidence = self.atoms_shown is not None and self.atoms_shown.evidence is not None
        if with_evidence != self.evidence_legend.isVisible():
            self.evidence_legend.setVisible(with_evidence)
        if self._histograms_at != self.frames_drawn:  # only when a new frame was drawn
            self._histograms_at = self.frames_drawn
            for panel in self.panels:
                if panel.shown is not None:
                    panel.hist.refresh()
        self._refresh_text(now)

    # ------------------------------------------------------------------ lifetime

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop the timers and the receiver thread (idempotent; called on close)."""
        self._draw_timer.stop()
        self._info_timer.stop()
        self._plot_timer.stop()
        self.receiver.stop()
