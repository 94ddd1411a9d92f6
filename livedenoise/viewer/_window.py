"""The live monitor window: raw and denoised side by side, CSS, atom count, throughput and latency over time.

Drawing follows pyqtgraph's fast path: only the newest frame is drawn, on a timer (60 Hz), as a
C-contiguous float32 array with explicit levels and a 256-entry lookup table (none for grey);
histograms, counters and the status line refresh at 5 Hz, the rolling plots at 2 Hz. The image
titles stay fixed (a changing title re-lays out the whole scene); per-frame figures go to the
counters line. Frames that arrive faster than that are dropped in
:class:`~livedenoise.viewer.StreamBuffer`, so the window never lags.

With ``serve --atoms``, the atoms of the frame on screen are drawn over the denoised image (a
:class:`pyqtgraph.ScatterPlotItem` of fixed-size rings; key O or the *atoms* box toggles it), each
ringed in the colour of its evidence (:mod:`._overlay`; key W or the *weak* box hides the weakly
supported ones), with the trail of its track over the last TRAIL_FRAMES frames (one
:class:`pyqtgraph.PlotCurveItem`) and an arrow for every hop of the last HOP_FADE_S seconds, fading
out (:class:`~._panels.HopMarkers`). Each draw tick only compares the shown frame's ids and the
buffer's atoms counter with the last ones; rings and trails are replaced only when the atoms to
show change, the hop markers only while one is fading (HOP_FADE_HZ). A daemon started without ``--atoms``
publishes none: after NO_ATOMS_AFTER_S seconds of frames without any, a note next to the box says
so, rather than leave an empty overlay unexplained.

The daemon's guard (issues 19 and 24: ``guard`` in ``stats``) is shown where the operator looks:
while it says the model ``does not fit`` the stream (a causal mean and blur beats it, measured
without ground truth), an amber bar over the images carries its message ("a causal filter ...
beats this model by 1.3 dB on this stream; this model expects about N atoms per nm² ..."); it goes
as soon as the stats say otherwise. The score itself, the model's and the best causal filter's
gain over raw in dB, is plotted beside CSS, and the counters get a ``guard`` line with the
verdict, the scores and the unexplained signal per frame.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

import numpy as np
import pyqtgraph as pg
import tifffile
from pyqtgraph.Qt import QtCore, QtGui, QtWidgets

from ..protocol import status_parts
from ._overlay import NO_EVIDENCE, PALETTE, WEAK_Z, evidence_index, fade, strong_z, trails, weak_mask
from ._panels import COLORMAPS, FIXED_LEVEL_FRAMES, HopMarkers, ImagePanel, RingsItem, colormap, fit_y, moving_mean
from ._receiver import FramePair, Receiver, StreamBuffer, weak_count

__all__ = ["FIXED_LEVEL_FRAMES", "MonitorWindow"]

DRAW_HZ = 60
INFO_HZ = 5  # histograms, counters, status line, waiting banner
PLOT_HZ = 2  # the rolling plots (each refresh repaints six axes: the costliest thing drawn)
WAITING_AFTER_S = 1.5  # nothing received for this long: "waiting for stream…"
PLOT_SPAN_S = 30.0  # the rolling plots show the last this many seconds
CSS_SMOOTH = 25  # frames in the CSS moving mean (and the atom count's)
ATOM_PEN = NO_EVIDENCE  # the rings of atoms without evidence: red reads on every colour map offered
ATOM_SIZE = 11  # ring diameter in screen pixels, whatever the zoom
TRAIL_FRAMES = 10  # a track's trail: its positions in the last this many frames
TRAIL_PEN = (255, 220, 0, 230)  # yellow, over the rings (a jittering atom's trail lies inside its ring)
HOP_FADE_S = 1.0  # a hop's arrow fades out over this many seconds after it arrived
HOP_FADE_HZ = 20  # fading arrows are redrawn this often (new hops at once)
HOP_COLOR = (255, 110, 0)  # orange arrows: apart from the rings' ramps and the trails
MAX_HOP_MARKERS = 512  # the newest hops drawn at once (a noise storm must not stall the GUI)
NO_ATOMS_AFTER_S = 2.0  # frames for this long and no atoms message: "the daemon publishes no atoms"
NO_ATOMS_NOTE = "the daemon publishes no atoms (serve --atoms)"

_BANNER_STYLE = "QLabel {{ background: {bg}; color: white; font-size: 15pt; padding: 4px; }}"
GUARD_COLOR = "#d08a00"  # amber: a warning about the pictures, not about the stream's health
GUARD_STYLE = f"QLabel {{ background: {GUARD_COLOR}; color: black; font-size: 12pt; padding: 4px; }}"
GUARD_PREFIX = "model does not fit this stream: "


def _legend(weak_z: float) -> str:
    """The colour key in the status bar: both ramps of the rings (the boundary at ``weak_z``), trail, hop."""
    def swatch(rgb) -> str:
        return f"<span style='color: rgb({rgb[0]}, {rgb[1]}, {rgb[2]})'>&#9632;</span>"

    return (
        f"rings: evidence z {swatch(PALETTE[0])}&le;0 {swatch(PALETTE[len(PALETTE) // 2 - 1])}&lt;{weak_z:g} weak"
        f" · {swatch(PALETTE[len(PALETTE) // 2])}{weak_z:g} {swatch(PALETTE[-1])}&ge;{strong_z(weak_z):g} supported"
        f" · {_swatch_text(TRAIL_PEN, '&#8212;')} trail · {_swatch_text(HOP_COLOR, '&#8594;')} hop "
    )


def _swatch_text(rgb, glyph: str) -> str:
    return f"<span style='color: rgb({rgb[0]}, {rgb[1]}, {rgb[2]})'><b>{glyph}</b></span>"


class MonitorWindow(QtWidgets.QMainWindow):
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

    # ------------------------------------------------------------------ layout

    def _build_images(self) -> None:
        self.banner = QtWidgets.QLabel()
        self.banner.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.guard_banner = QtWidgets.QLabel()
        self.guard_banner.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.guard_banner.setWordWrap(True)  # the message is a sentence: it must not widen the window
        self.guard_banner.setStyleSheet(GUARD_STYLE)
        self.guard_banner.setToolTip(
            "The daemon's guard: on this stream a classical causal filter (a mean of recent frames and a blur) is "
            "closer to the truth than this model, by a score that needs no ground truth. Where the raw frames also "
            "do not look like the movie the model was trained on (density, width or counts of the atoms, a lattice), "
            "the message says so: the denoised images may show atoms that are not there, or erase those that are. "
            "Train a model on this stream (livedenoise train), or serve --model filter."
        )
        self.guard_banner.hide()
        self.images = pg.GraphicsLayoutWidget()
        layout = self.images.ci
        self.raw_panel = ImagePanel(layout, "raw", col=0)
        self.denoised_panel = ImagePanel(layout, "denoised", col=2)
        self.denoised_panel.view.setXLink(self.raw_panel.view)
        self.denoised_panel.view.setYLink(self.raw_panel.view)
        self.panels = (self.raw_panel, self.denoised_panel)
        self.atoms_overlay = RingsItem([*PALETTE, ATOM_PEN], size=ATOM_SIZE, width=1.5)  # last: no evidence
        self.atoms_overlay.setZValue(10)
        self.trails = pg.PlotCurveItem(pen=pg.mkPen(TRAIL_PEN, width=2), antialias=True)
        self.trails.setZValue(10.5)  # rings 10, hop arrows 11
        self.hop_markers = HopMarkers(HOP_COLOR, width=2.0, head=6.0)
        self.hop_markers.setZValue(11)
        for item in (self.trails, self.atoms_overlay, self.hop_markers):
            self.denoised_panel.view.addItem(item)
        self.set_colormap("grey")

    def _build_plots(self) -> None:
        self.plots = pg.GraphicsLayoutWidget()
        legend = {"offset": (5, 5), "brush": (0, 0, 0, 160)}  # top left: the newest data is on the right
        self.css_plot = self.plots.addPlot(row=0, col=0, title="CSS (consecutive frames)")
        self.css_plot.addLegend(**legend)
        self.css_points = self.css_plot.plot(
            pen=None, symbol="o", symbolSize=3, symbolPen=None, symbolBrush=(120, 170, 255, 110), name="per frame"
        )
        self.css_line = self.css_plot.plot(pen=pg.mkPen((255, 200, 60), width=2), name=f"mean of {CSS_SMOOTH}")
        # the ground-truth-free score (issue 24): the model's and the best causal filter's gain over raw
        self.score_plot = self.plots.addPlot(row=0, col=1, title="score (dB over raw, no ground truth)")
        self.score_plot.addLegend(**legend)
        self.score_model = self.score_plot.plot(pen=pg.mkPen((255, 200, 60), width=2), name="model")
        self.score_filter = self.score_plot.plot(pen=pg.mkPen((150, 150, 150), width=2, style=QtCore.Qt.PenStyle.DashLine),
                                                 name="best causal filter")
        self.atoms_plot = self.plots.addPlot(row=0, col=2, title="atoms per frame")
        self.atoms_plot.addLegend(**legend)
        supported, weak = tuple(int(c) for c in PALETTE[-1]), tuple(int(c) for c in PALETTE[0])
        self.atoms_points = self.atoms_plot.plot(  # all atoms where the daemon sends no evidence
            pen=None, symbol="o", symbolSize=3, symbolPen=None, symbolBrush=(*supported, 110), name="supported"
        )
        self.atoms_weak_points = self.atoms_plot.plot(
            pen=None, symbol="o", symbolSize=3, symbolPen=None, symbolBrush=(*weak, 130), name="weak"
        )
        self.atoms_line = self.atoms_plot.plot(pen=pg.mkPen(supported, width=2), name=f"means of {CSS_SMOOTH}")
        self.atoms_weak_line = self.atoms_plot.plot(pen=pg.mkPen(weak, width=2), connect="finite")
        self.fps_plot = self.plots.addPlot(row=0, col=3, title="throughput (frames/s)")
        self.fps_plot.addLegend(**legend)
        self.fps_in = self.fps_plot.plot(pen=pg.mkPen((150, 150, 150), width=2), name="in")
        self.fps_out = self.fps_plot.plot(pen=pg.mkPen((80, 200, 120), width=2), name="denoised")
        self.fps_shown = self.fps_plot.plot(pen=pg.mkPen((120, 170, 255), width=1), name="displayed")
        self.latency_plot = self.plots.addPlot(row=0, col=4, title="latency (ms)")
        self.latency_plot.addLegend(**legend)
        self.latency_p50 = self.latency_plot.plot(pen=pg.mkPen((80, 200, 120), width=2), name="p50")
        self.latency_p99 = self.latency_plot.plot(pen=pg.mkPen((240, 110, 90), width=2), name="p99")
        for plot in (self.css_plot, self.score_plot, self.atoms_plot, self.fps_plot, self.latency_plot):
            plot.setLabel("bottom", "time", units="s")
            plot.showGrid(x=True, y=True, alpha=0.25)
        for plot in (self.score_plot, self.atoms_plot, self.fps_plot, self.latency_plot):
            plot.setXLink(self.css_plot)

    def _build_controls(self) -> None:
        bar = self.addToolBar("monitor")
        bar.setMovable(False)
        self.pause_action = self._action(bar, "Pause", "Space", self.set_paused, checkable=True)
        self.snapshot_action = self._action(bar, "Snapshot", "S", lambda: self.snapshot())
        bar.addSeparator()
        self.auto_levels_action = self._action(bar, "Auto levels", "A", self.set_auto_levels, checkable=True)
        self.reset_levels_action = self._action(bar, "Reset levels", "R", lambda: self.reset_levels())
        bar.addSeparator()
        self.atoms_box = QtWidgets.QCheckBox("atoms [O]")
        self.atoms_box.setToolTip("Ring the atoms found by serve --atoms on the denoised frame")
        self.atoms_box.setChecked(self.show_atoms)
        self.atoms_box.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)  # keep Space for pause
        self.atoms_box.toggled.connect(self.set_show_atoms)
        bar.addWidget(self.atoms_box)
        self.atoms_note = QtWidgets.QLabel(f" {NO_ATOMS_NOTE} ")
        self.atoms_note.setStyleSheet("QLabel { color: #b86e00; font-style: italic; }")
        self.atoms_note.setToolTip("Atoms are found by the daemon: restart it with serve --atoms to see them here")
        self._atoms_note_action = bar.addWidget(self.atoms_note)  # a toolbar widget shows through its action
        self._atoms_note_action.setVisible(False)
        self.weak_box = QtWidgets.QCheckBox("weak [W]")
        self.weak_box.setToolTip(
            f"Show the atoms whose raw counts support them weakly (evidence z below {WEAK_Z:g}: perhaps invented)"
        )
        self.weak_box.setChecked(self.show_weak)
        self.weak_box.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)
        self.weak_box.toggled.connect(self.set_show_weak)
        bar.addWidget(self.weak_box)
        for key, box in (("O", self.atoms_box), ("W", self.weak_box)):
            toggle = QtGui.QAction(box.text(), self)
            toggle.setShortcut(QtGui.QKeySequence(key))
            toggle.setShortcutContext(QtCore.Qt.ShortcutContext.WindowShortcut)
            toggle.triggered.connect(box.toggle)
            self.addAction(toggle)  # a shortcut of the window; the box is its button
        bar.addSeparator()
        bar.addWidget(QtWidgets.QLabel(" colour map "))
        self.colormap_box = QtWidgets.QComboBox()
        self.colormap_box.addItems(COLORMAPS)
        self.colormap_box.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)  # keep Space for pause
        self.colormap_box.currentTextChanged.connect(self.set_colormap)
        bar.addWidget(self.colormap_box)

        self.counters = QtWidgets.QLabel()
        self.counters.setFont(QtGui.QFontDatabase.systemFont(QtGui.QFontDatabase.SystemFont.FixedFont))
        self.counters.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
        self.status = QtWidgets.QLabel()
        self.statusBar().addPermanentWidget(self.status, 1)
        self.evidence_legend = QtWidgets.QLabel(_legend(WEAK_Z))  # the rings' colour key, bottom right
        self.evidence_legend.setToolTip(
            "Ring colour: how strongly the raw counts support the atom (evidence z-score, accumulated along its "
            "track); yellow lines: the tracks' last frames; orange arrows: hops of the last second"
        )
        self.statusBar().addPermanentWidget(self.evidence_legend)
        self.evidence_legend.setVisible(False)  # shown while the atoms on screen carry evidence

        splitter = QtWidgets.QSplitter(QtCore.Qt.Orientation.Vertical)
        splitter.addWidget(self.images)
        splitter.addWidget(self.plots)
        splitter.setSizes([560, 240])
        central = QtWidgets.QWidget()
        box = QtWidgets.QVBoxLayout(central)
        box.setContentsMargins(2, 2, 2, 2)
        box.addWidget(self.banner)
        box.addWidget(self.guard_banner)
        box.addWidget(splitter, 1)
        box.addWidget(self.counters)
        self.setCentralWidget(central)

    def _action(self, bar: QtWidgets.QToolBar, text: str, key: str, slot, checkable: bool = False) -> QtGui.QAction:
        action = QtGui.QAction(f"{text} [{key}]", self)
        action.setShortcut(QtGui.QKeySequence(key))
        action.setShortcutContext(QtCore.Qt.ShortcutContext.WindowShortcut)
        action.setCheckable(checkable)
        (action.toggled if checkable else action.triggered).connect(slot)
        bar.addAction(action)
        return action

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

    def set_show_atoms(self, show: bool) -> None:
        """Draw the atoms (``serve --atoms``) over the denoised frame, or not."""
        self.show_atoms = bool(show)
        if self.atoms_box.isChecked() != self.show_atoms:
            self.atoms_box.setChecked(self.show_atoms)
        for item in (self.atoms_overlay, self.trails, self.hop_markers):
            item.setVisible(self.show_atoms)
        self._update_overlay()

    def set_show_weak(self, show: bool) -> None:
        """Ring the weakly supported atoms too (evidence below the daemon's ``weak_z``), or hide them."""
        self.show_weak = bool(show)
        if self.weak_box.isChecked() != self.show_weak:
            self.weak_box.setChecked(self.show_weak)
        self._update_overlay()

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

    def _update_overlay(self) -> None:
        """Show the atoms of the frame on screen (or of the frame just before, until they arrive).

        O(1) when neither the frame on screen nor the atoms received changed since the last call.
        """
        frame = self.frame
        ids = None if frame is None or frame.denoised is None else (frame.series_id, frame.image_id)
        key = (ids, self.buffer.atoms_version, self.show_atoms, self.show_weak)
        if key == self._overlay_key:
            return
        self._overlay_key = key
        atoms = self.buffer.atoms_for(*ids) if ids is not None and self.show_atoms else None
        if atoms is self.atoms_shown and key[2:] == self._overlay_drawn:
            return
        self.atoms_shown, self._overlay_drawn = atoms, key[2:]
        if atoms is None or len(atoms) == 0:
            self.atoms_drawn = np.zeros(0, bool)
            self.atoms_overlay.clear()
            self.trails.setData([], [])
            return
        weak_z = WEAK_Z if atoms.weak_z is None else atoms.weak_z
        drawn = np.ones(len(atoms), bool)
        if atoms.evidence is not None and not self.show_weak:
            drawn = ~weak_mask(atoms.evidence, weak_z)
        self.atoms_drawn = drawn
        # [x, y] has pixel centres at integers; the image item puts pixel (i, j) on [j, j+1] x [i, i+1]
        pos = atoms.positions[drawn] + np.float32(0.5)
        if atoms.evidence is None:
            self.atoms_overlay.setData(pos, len(PALETTE))
        else:
            self.atoms_overlay.setData(pos, evidence_index(atoms.evidence[drawn], weak_z))
        history = self.buffer.atoms_history(atoms.series_id, atoms.image_id, TRAIL_FRAMES)
        points, connect = trails(history, atoms, TRAIL_FRAMES, keep=drawn)
        points = points + np.float32(0.5)
        self.trails.setData(points[:, 0], points[:, 1], connect=connect)

    def _update_hops(self, now: float | None = None) -> None:
        """Arrows for the hops of the shown series received in the last HOP_FADE_S seconds, fading.

        O(1) when no hop arrived since the last call and none is still fading.
        """
        frame = self.frame
        series = None if frame is None else frame.series_id
        key = (series, self.buffer.hops_version, self.show_atoms)
        now = time.monotonic() if now is None else now
        if key == self._hops_key and (not self._hops_live or now < self._hops_next):
            return
        self._hops_key, self._hops_next = key, now + 1.0 / HOP_FADE_HZ
        recent = self.buffer.recent_hops(series, now, HOP_FADE_S) if self.show_atoms and series is not None else []
        recent = [(age, hops) for age, hops in recent if len(hops)]
        if not recent:
            self._hops_live = False
            if len(self.hop_markers):
                self.hop_markers.set_markers(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0))
            return
        self._hops_live = True
        before = np.concatenate([h.before for _, h in recent])[-MAX_HOP_MARKERS:]
        after = np.concatenate([h.after for _, h in recent])[-MAX_HOP_MARKERS:]
        alpha = np.concatenate([np.full(len(h), fade(age, HOP_FADE_S)) for age, h in recent])[-MAX_HOP_MARKERS:]
        self.hop_markers.set_markers(before + 0.5, after + 0.5, alpha)

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

    def _refresh_banner(self) -> None:
        error = self.receiver.error
        if error is not None:
            text, bg = f"receiver stopped: {error}", "#a03030"
        elif self.waiting:
            idle = self.buffer.idle_for()
            since = "nothing received yet" if idle == float("inf") else f"nothing for {idle:.0f} s"
            text, bg = f"waiting for stream… ({self.address}, {since})", "#b86e00"
        elif self.paused:
            text, bg = "paused: the stream goes on; Space resumes", "#2f5fa0"
        else:
            self.banner.hide()
            return
        self.banner.setText(text)
        self.banner.setStyleSheet(_BANNER_STYLE.format(bg=bg))
        self.banner.show()

    @property
    def guard_warning(self) -> str | None:
        """The guard's message while the daemon's stats say the stream does not fit the model, else None."""
        stats = self.buffer.last_stats
        if stats.get("guard") != "does not fit":
            return None
        message = stats.get("guard_message")
        return message if isinstance(message, str) and message else "the stream does not look like its training data"

    def _refresh_guard(self) -> None:
        """Show the guard's warning over the images while it lasts; hide it when the stream fits again."""
        warning = self.guard_warning
        if warning is None:
            if not self.guard_banner.isHidden():
                self.guard_banner.hide()
            return
        text = GUARD_PREFIX + warning
        if self.guard_banner.text() != text:
            self.guard_banner.setText(text)
        if self.guard_banner.isHidden():
            self.guard_banner.show()

    @property
    def no_atoms(self) -> bool:
        """The no-atoms note is up: frames for NO_ATOMS_AFTER_S and no atoms message, nor an atom finder in stats."""
        return self._atoms_note_action.isVisible()

    def _refresh_atoms_note(self, now: float) -> None:
        """Show the no-atoms note once frames have flowed NO_ATOMS_AFTER_S without an atoms message
        from a daemon whose stats show no atom finder; hide it as soon as atoms arrive."""
        heard = self.buffer.counts["atoms"]
        if heard != self._atoms_heard or self.waiting or not self.buffer.counts["denoised"]:
            self._atoms_heard = heard
            self._no_atoms_since = None
        elif self._no_atoms_since is None:
            self._no_atoms_since = now
        silent = self._no_atoms_since is not None and now - self._no_atoms_since >= NO_ATOMS_AFTER_S
        show = silent and "atoms_frames" not in self.buffer.last_stats
        if show != self._atoms_note_action.isVisible():
            self._atoms_note_action.setVisible(show)

    def _refresh_plots(self) -> None:
        """PLOT_HZ: data and explicit ranges (the window scrolls; y fits the visible data)."""
        now = time.monotonic()
        elapsed = self.buffer.elapsed(now)
        self._display_fps.append((elapsed, self.display_fps(now)))
        hist = self.buffer.history()
        start = max(0.0, elapsed - PLOT_SPAN_S)
        shown = np.array(self._display_fps, dtype=np.float64).reshape(-1, 2)
        self.css_points.setData(hist.css_t, hist.css)
        self.css_line.setData(hist.css_t, moving_mean(hist.css, CSS_SMOOTH))
        supported, weak = hist.atoms_supported, hist.atoms_weak
        self.atoms_points.setData(hist.atoms_t, supported)
        self.atoms_line.setData(hist.atoms_t, moving_mean(supported, CSS_SMOOTH))
        has_weak = np.isfinite(weak)
        self.atoms_weak_points.setData(hist.atoms_t[has_weak], weak[has_weak])
        self.atoms_weak_line.setData(hist.atoms_t[has_weak], moving_mean(weak[has_weak], CSS_SMOOTH))
        self.fps_in.setData(hist.stats_t, hist.stats["fps_in"], connect="finite")
        self.fps_out.setData(hist.stats_t, hist.stats["fps_out"], connect="finite")
        self.fps_shown.setData(shown[:, 0], shown[:, 1])
        self.latency_p50.setData(hist.stats_t, hist.stats["latency_ms_p50"], connect="finite")
        self.latency_p99.setData(hist.stats_t, hist.stats["latency_ms_p99"], connect="finite")
        self.score_model.setData(hist.stats_t, hist.stats["score_db"], connect="finite")
        self.score_filter.setData(hist.stats_t, hist.stats["score_filter_db"], connect="finite")
        self.css_plot.setXRange(start, max(elapsed, 1.0), padding=0.02)  # the other two are linked
        recent = hist.stats_t >= start
        fit_y(self.css_plot, hist.css[hist.css_t >= start])
        fit_y(self.atoms_plot, supported[hist.atoms_t >= start], weak[hist.atoms_t >= start], zero=True)
        fit_y(self.fps_plot, hist.stats["fps_in"][recent], hist.stats["fps_out"][recent], shown[shown[:, 0] >= start, 1], zero=True)
        fit_y(self.latency_plot, hist.stats["latency_ms_p50"][recent], hist.stats["latency_ms_p99"][recent], zero=True)
        fit_y(self.score_plot, hist.stats["score_db"][recent], hist.stats["score_filter_db"][recent])

    def _refresh_text(self, now: float) -> None:
        stats = self.buffer.last_stats
        counts = self.buffer.counts

        parts = status_parts(stats)
        lines = [
            f"daemon  {parts['daemon']}",
            f"viewer  raw {counts['raw']}  denoised {counts['denoised']}  stats {counts['stats']}"
            f"  atoms {counts['atoms']}  hops {self.buffer.hops_heard}  bad {counts['malformed']}  drawn {self.frames_drawn}"
            f"  display {self.display_fps(now):.0f} fps",
        ]
        for name in ("atoms", "guard"):  # lines of their own: the window's width stays that of the images
            if name in parts:
                lines.insert(1, f"{name:<7} {parts[name]}")
        frame = self.frame
        if frame is not None:
            css, latency = frame.denoised_header.get("css"), frame.denoised_header.get("latency_ms")
            lines.append(
                f"shown   series {frame.series_id}  image {frame.image_id}"
                + (f"  CSS {css:.3f}" if isinstance(css, float) else "")
                + (f"  latency {latency:.1f} ms" if isinstance(latency, int | float) else "")
                + self._atoms_text(frame)
                + ("  (paused)" if self.paused else "")
            )
        self.counters.setText("\n".join(lines))
        self.status.setText(
            f"model {stats.get('model', '–')} · provider {stats.get('provider', '–')}"
            f" · stream {self.address} · series {'–' if frame is None else frame.series_id}"
        )

    def _atoms_text(self, frame: FramePair) -> str:
        atoms = self.atoms_shown
        if atoms is None:
            return ""
        weak = weak_count(atoms)
        text = f"  atoms {atoms.count}" + ("" if np.isnan(weak) else f" ({weak:.0f} weak)")
        if atoms.image_id == frame.image_id:
            return text
        return f"{text} (of image {atoms.image_id})"

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
