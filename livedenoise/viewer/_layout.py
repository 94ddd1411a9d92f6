"""The monitor's widgets: the two image panels with the atoms' items over the denoised one, the
rolling plots (CSS, score, atoms, throughput, latency) and their refresh, the toolbar and the text
labels. A mixin of :class:`~._window.MonitorWindow`, which owns the state these read."""

from __future__ import annotations

import time

import numpy as np
import pyqtgraph as pg
from pyqtgraph.Qt import QtCore, QtGui, QtWidgets

from ._overlay import PALETTE, WEAK_Z, strong_z
from ._overlay_draw import ATOM_PEN, ATOM_SIZE, HOP_COLOR, TRAIL_PEN
from ._panels import COLORMAPS, HopMarkers, ImagePanel, RingsItem, fit_y, moving_mean
from ._text import GUARD_STYLE, NO_ATOMS_NOTE

PLOT_SPAN_S = 30.0  # the rolling plots show the last this many seconds
CSS_SMOOTH = 25  # frames in the CSS moving mean (and the atom count's)


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


class Layout:
    """Builds the window's widgets (``_build_*``) and refreshes the rolling plots (:meth:`_refresh_plots`)."""

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
