"""The monitor's building blocks: an image panel with its levels control, colour maps, display
levels, the helpers of the rolling plots, and the hop markers (:mod:`._window` lays them out).

Levels follow pyqtgraph's fast path: explicit levels and a 256-entry lookup table, the histogram
refreshed at the info rate rather than on every frame.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from pyqtgraph.Qt import QtCore, QtGui, QtWidgets

COLORMAPS: tuple[str, ...] = ("grey", "viridis", "inferno", "magma", "cividis")
FIXED_LEVEL_FRAMES = 5  # fixed levels: the range of the first frames of each series


def colormap(name: str) -> pg.ColorMap:
    """A colour map by name; ``grey`` is linear black to white."""
    if name == "grey":
        return pg.ColorMap([0.0, 1.0], [(0, 0, 0), (255, 255, 255)], name="grey")
    return pg.colormap.get(name)


def robust_levels(image: np.ndarray, low: float = 0.1, high: float = 99.9) -> tuple[float, float]:
    """Display levels from percentiles of a subsample (at most ~64k pixels, so cheap on 1024² frames)."""
    step = max(1, int(np.sqrt(image.size / 65536)))
    sample = image[::step, ::step]
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(sample, (low, high)))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def moving_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Causal moving mean (the first points average what there is so far)."""
    if values.size == 0:
        return values
    csum = np.cumsum(values)
    out = csum.copy()
    out[window:] = csum[window:] - csum[:-window]
    return out / np.minimum(np.arange(1, values.size + 1), window)


def fit_y(plot: pg.PlotItem, *series: np.ndarray, zero: bool = False) -> None:
    """Set a plot's y range to its finite data (from 0 with ``zero``); keep it when there is none."""
    values = np.concatenate([np.ravel(s) for s in series])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return
    lo, hi = float(values.min()), float(values.max())
    if zero:
        lo = min(lo, 0.0)
    if hi - lo < 1e-9:
        lo, hi = lo - max(abs(lo) * 0.05, 1e-3), hi + max(abs(hi) * 0.05, 1e-3)
    plot.setYRange(lo, hi, padding=0.08)


class _Histogram(pg.HistogramLUTItem):
    """Levels control with a 256-entry lookup table, whose histogram is refreshed on demand.

    pyqtgraph recomputes the histogram on every ``setImage``; here :meth:`refresh` does it at the
    plot rate instead, so drawing a frame costs only the image itself.
    """

    def getLookupTable(self, img=None, n=None, alpha=None):
        return super().getLookupTable(img, 256, alpha)

    def imageChanged(self, autoLevel=False, autoRange=False):
        pass  # connected to ImageItem.sigImageChanged by pyqtgraph: skipped per frame

    def refresh(self) -> None:
        super().imageChanged()


class ImagePanel:
    """One image (raw or denoised) in the window: view, image item, levels control, level state."""

    def __init__(self, layout: pg.GraphicsLayout, title: str, col: int) -> None:
        self.title = title
        self.label = layout.addLabel(title, row=0, col=col, colspan=2)
        self.view: pg.ViewBox = layout.addViewBox(row=1, col=col, lockAspect=True, invertY=True)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.view.addItem(self.image)
        self.hist = _Histogram(image=self.image)
        layout.addItem(self.hist, row=1, col=col + 1)
        self.shown: np.ndarray | None = None  # the frame on screen, as received (original dtype)
        self._first_levels: list[tuple[float, float]] = []

    def reset_levels(self) -> None:
        """Fixed levels are taken again from the next frames."""
        self._first_levels.clear()

    def levels(self) -> tuple[float, float]:
        lo, hi = self.hist.getLevels()
        return float(lo), float(hi)

    def show(self, data: np.ndarray, auto_levels: bool) -> None:
        image = np.ascontiguousarray(data, dtype=np.float32)
        if auto_levels or len(self._first_levels) < FIXED_LEVEL_FRAMES:
            lo, hi = robust_levels(image)
            if not auto_levels:
                self._first_levels.append((lo, hi))
                lo = min(level[0] for level in self._first_levels)
                hi = max(level[1] for level in self._first_levels)
            self.hist.setLevels(lo, hi)
        new_shape = self.shown is None or self.shown.shape != data.shape
        self.image.setImage(image, autoLevels=False)
        self.shown = data
        if new_shape:
            self.view.autoRange(padding=0)


class _ScreenItem(pg.GraphicsObject):
    """An item whose marks have a fixed size on screen around points in image coordinates: its
    bounding rectangle is the points' plus a margin of ``margin_px`` screen pixels, which is
    recomputed only when the view's scale changes (pyqtgraph's pixel size costs ~70 us a call)."""

    def __init__(self, margin_px: float) -> None:
        super().__init__()
        self._margin_px = float(margin_px)
        self._rect = QtCore.QRectF()
        self._pad: float | None = None

    def _set_bounds(self, points: np.ndarray) -> None:
        self.prepareGeometryChange()
        if points.size:
            lo, hi = points.min(axis=0), points.max(axis=0)
            self._rect = QtCore.QRectF(float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1]))
        else:
            self._rect = QtCore.QRectF()
        self.update()

    def boundingRect(self) -> QtCore.QRectF:
        if not self._has_points():
            return QtCore.QRectF()
        if self._pad is None:
            px = max(self.pixelLength(QtCore.QPointF(1, 0)) or 0.0, self.pixelLength(QtCore.QPointF(0, 1)) or 0.0)
            self._pad = self._margin_px * (px or 1.0)
        pad = self._pad
        return self._rect.adjusted(-pad, -pad, pad, pad)

    def viewTransformChanged(self) -> None:
        super().viewTransformChanged()
        self.prepareGeometryChange()  # the margin in screen pixels changed size in image units
        self._pad = None

    def _has_points(self) -> bool:
        raise NotImplementedError


def _device_xy(painter: QtGui.QPainter, points: np.ndarray) -> np.ndarray:
    """Image coordinates (N, 2) to the painter's device pixels, vectorised (QTransform.map per point
    would be a Python call each)."""
    t = painter.transform()
    x, y = points[:, 0], points[:, 1]
    return np.stack([t.m11() * x + t.m21() * y + t.m31(), t.m12() * x + t.m22() * y + t.m32()], axis=1)


class RingsItem(_ScreenItem):
    """Rings of a fixed size on screen around atoms, each in one of a few colours (the evidence ramps).

    A :class:`pyqtgraph.ScatterPlotItem` with a pen per point costs ~0.8 ms to set 14 points and
    ~9 ms for 400; here each colour's ring is drawn once into a pixmap and every atom is one
    ``drawPixmap``: setting the points costs nothing and painting 400 rings well under a millisecond.
    """

    def __init__(self, colors, size: float = 11.0, width: float = 1.5) -> None:
        super().__init__(margin_px=size / 2 + width + 2)
        self._colors = [tuple(int(c) for c in color) for color in colors]
        self._size, self._width = float(size), float(width)
        self._pixmaps: dict[float, list[QtGui.QPixmap]] = {}  # by device pixel ratio
        self._pos = np.zeros((0, 2))
        self._index = np.zeros(0, np.int64)

    def _has_points(self) -> bool:
        return bool(self._pos.shape[0])

    def setData(self, pos: np.ndarray, index: np.ndarray | int = 0) -> None:
        """Rings at ``pos`` (N, 2) ``[x, y]``, in colour ``index`` (N,) (or one index for all)."""
        self._pos = np.asarray(pos, np.float64).reshape(-1, 2)
        self._index = np.broadcast_to(np.asarray(index, np.int64), (self._pos.shape[0],)).copy()
        self._set_bounds(self._pos)

    def clear(self) -> None:
        self.setData(np.zeros((0, 2)))

    def getData(self) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of the rings, as :meth:`pyqtgraph.ScatterPlotItem.getData` gives them."""
        return self._pos[:, 0], self._pos[:, 1]

    def colour_index(self) -> np.ndarray:
        return self._index

    def _ring_pixmaps(self, ratio: float) -> list[QtGui.QPixmap]:
        if ratio not in self._pixmaps:
            side = int(np.ceil(self._size + 2 * self._width + 2))
            maps = []
            for color in self._colors:
                pixmap = QtGui.QPixmap(int(np.ceil(side * ratio)), int(np.ceil(side * ratio)))
                pixmap.setDevicePixelRatio(ratio)
                pixmap.fill(QtCore.Qt.GlobalColor.transparent)
                painter = QtGui.QPainter(pixmap)
                painter.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing)
                painter.setPen(QtGui.QPen(QtGui.QColor(*color), self._width))
                offset = (side - self._size) / 2
                painter.drawEllipse(QtCore.QRectF(offset, offset, self._size, self._size))
                painter.end()
                maps.append(pixmap)
            self._pixmaps[ratio] = maps
        return self._pixmaps[ratio]

    def paint(self, painter: QtGui.QPainter, *args) -> None:
        if not self._has_points():
            return
        maps = self._ring_pixmaps(float(painter.device().devicePixelRatioF()))
        half = (self._size + 2 * self._width + 2) / 2
        at = _device_xy(painter, self._pos) - np.ceil(2 * half) / 2
        painter.save()
        painter.resetTransform()
        for (x, y), i in zip(at.tolist(), self._index.tolist(), strict=True):
            painter.drawPixmap(QtCore.QPointF(x, y), maps[i])
        painter.restore()


class HopMarkers(_ScreenItem):
    """Arrows from where an atom was to where it hopped, each with its own opacity (they fade).

    Positions are in image coordinates; the lines and arrowheads are drawn in screen pixels, so an
    arrow reads the same at any zoom (a hop of 3 px on a 512 px frame is a few screen pixels long:
    its arrowhead still shows it). One item paints all the markers. Antialiased arrows cost ~50 us
    each to paint (60 of them, the demo's flood: 3 ms), so the item is cached as a pixmap in device
    coordinates: it is painted again only when the markers change (the window fades them at a
    few steps a second), not on every frame drawn under it.
    """

    def __init__(self, color: tuple[int, int, int], width: float = 2.0, head: float = 7.0) -> None:
        super().__init__(margin_px=head + width + 4)
        self.setCacheMode(QtWidgets.QGraphicsItem.CacheMode.DeviceCoordinateCache)
        self._color = QtGui.QColor(*color)
        self._width, self._head = float(width), float(head)
        self._before = np.zeros((0, 2))
        self._after = np.zeros((0, 2))
        self._alpha = np.zeros(0)

    def __len__(self) -> int:
        return int(self._alpha.size)

    def _has_points(self) -> bool:
        return bool(len(self))

    def set_markers(self, before: np.ndarray, after: np.ndarray, alpha: np.ndarray) -> None:
        """Replace the markers: (M, 2) ``[x, y]`` from and to, (M,) opacity in [0, 1]."""
        self._before = np.asarray(before, np.float64).reshape(-1, 2)
        self._after = np.asarray(after, np.float64).reshape(-1, 2)
        self._alpha = np.clip(np.asarray(alpha, np.float64).ravel(), 0.0, 1.0)
        self._set_bounds(np.concatenate([self._before, self._after]))

    def markers(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What is drawn: ``(before, after, alpha)``."""
        return self._before, self._after, self._alpha

    def paint(self, painter: QtGui.QPainter, *args) -> None:
        if not len(self):
            return
        start, end = _device_xy(painter, self._before), _device_xy(painter, self._after)
        delta = end - start
        length = np.hypot(delta[:, 0], delta[:, 1])
        unit = delta / np.maximum(length, 1e-9)[:, None]
        head = np.minimum(self._head, 0.8 * length)[:, None]
        base = end - head * unit
        side = 0.5 * head * np.stack([-unit[:, 1], unit[:, 0]], axis=1)
        left, right = base + side, base - side
        painter.save()
        painter.resetTransform()
        painter.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing)
        color = QtGui.QColor(self._color)
        pen = QtGui.QPen(color, self._width)
        pen.setCapStyle(QtCore.Qt.PenCapStyle.RoundCap)
        for i in np.flatnonzero(self._alpha > 0).tolist():
            color.setAlphaF(float(self._alpha[i]))
            pen.setColor(color)
            painter.setPen(pen)
            painter.setBrush(color)
            a, b = QtCore.QPointF(*start[i]), QtCore.QPointF(*end[i])
            painter.drawLine(a, b)
            if length[i] >= 1.0:
                painter.drawPolygon(QtGui.QPolygonF([b, QtCore.QPointF(*left[i]), QtCore.QPointF(*right[i])]))
        painter.restore()
