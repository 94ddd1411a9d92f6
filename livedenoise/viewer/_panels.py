"""The monitor's building blocks: an image panel with its levels control, colour maps, display
levels, and the helpers of the rolling plots (:mod:`._window` lays them out).

Levels follow pyqtgraph's fast path: explicit levels and a 256-entry lookup table, the histogram
refreshed at the info rate rather than on every frame.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg

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
