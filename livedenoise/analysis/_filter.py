"""The classical causal filter: a weighted mean of the current and previous frames, then a Gaussian.

Every self-supervised or Noise2Atom model is measured against it, live and offline, because on
real samples it is hard to beat: a weighted mean over ``window`` frames (equal weights, or
exponentially decaying ones, ``decay`` per frame) lowers the noise variance by the sum of squared
weights, and a Gaussian of ``sigma`` pixels trades resolution for noise across the frame. Its one
ONNX form (:func:`trainer.filtermodel.filter_model`) is a model like any other in ``serve``; this
numpy form is what the guard and ``train`` score with.

>>> import numpy as np
>>> f = CausalFilter(window=4, sigma=0.0)
>>> f.weights().tolist()
[0.25, 0.25, 0.25, 0.25]
>>> frames = np.arange(6, dtype=np.float32)[:, None, None] * np.ones((6, 2, 2), np.float32)
>>> f.apply(frames)[:, 0, 0].tolist()    # before the fourth frame, the first frame is repeated
[0.0, 0.25, 0.75, 1.5, 2.5, 3.5]
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

#: The longest window the filter (and its ONNX form) takes, in frames.
MAX_WINDOW = 16


@dataclass(frozen=True, slots=True)
class CausalFilter:
    """``window`` frames (1 = the current frame only), weighted equally (``decay`` 0) or by
    ``decay ** lag`` (exponential, truncated at ``window``), then a Gaussian of ``sigma`` px."""

    window: int = 5
    sigma: float = 1.0
    decay: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.window <= MAX_WINDOW:
            raise ValueError(f"causal filter window {self.window}: 1 to {MAX_WINDOW} frames")
        if not (0 <= self.sigma <= 8 and 0 <= self.decay < 1):
            raise ValueError(f"causal filter sigma {self.sigma} (0-8 px), decay {self.decay} (0-1)")

    def weights(self) -> np.ndarray:
        """The frame weights, the current frame's last (channel order of a multi-frame model)."""
        lag = np.arange(self.window - 1, -1, -1, dtype=np.float64)
        w = np.ones(self.window) if self.decay == 0 else self.decay**lag
        return w / w.sum()

    def describe(self) -> str:
        kind = f"causal mean of {self.window}" if self.decay == 0 else f"exponential {self.decay:g}/frame over {self.window}"
        return f"{kind}, then Gaussian {self.sigma:g} px" if self.sigma else kind

    def to_dict(self) -> dict[str, float]:
        return {"window": self.window, "sigma": self.sigma, "decay": self.decay}

    def apply(self, frames: np.ndarray) -> np.ndarray:
        """The filter on a ``(T, H, W)`` run, frame by frame causally (the first frame repeated
        before the run's start, as the engine does for a multi-frame model)."""
        y = np.asarray(frames, np.float32)
        w = self.weights().astype(np.float32)
        k = self.window
        out = np.zeros_like(y)
        for j, wj in enumerate(w):  # channel j holds the frame k - 1 - j frames back
            src = np.clip(np.arange(y.shape[0]) - (k - 1 - j), 0, None)
            out += wj * y[src]
        return gaussian_blur(out, self.sigma)

    def at(self, history: np.ndarray) -> np.ndarray:
        """The filter's output for the last frame of ``history`` (``(n, H, W)``, oldest first;
        fewer than ``window`` frames: the oldest is repeated)."""
        k = self.window
        h = np.asarray(history, np.float32)
        take = h[np.clip(np.arange(h.shape[0] - k, h.shape[0]), 0, None)]
        return gaussian_blur(np.tensordot(self.weights().astype(np.float32), take, axes=1), self.sigma)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """The normalised 1-D Gaussian, truncated at 3 sigma (at least 1 tap either side)."""
    r = max(1, math.ceil(3 * sigma))
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return (g / g.sum()).astype(np.float32)


def gaussian_blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    """A separable Gaussian over the last two axes, edges reflected (numpy only: the daemon's)."""
    out = np.asarray(frames, np.float32)
    if sigma <= 0:
        return out
    g = gaussian_kernel(sigma)
    r = g.size // 2
    h, w = out.shape[-2:]
    lead = [(0, 0)] * (out.ndim - 2)
    ry, rx = min(r, h - 1), min(r, w - 1)
    if ry < r or rx < r:  # a frame narrower than the kernel: reflect as often as needed
        return _blur_small(out, g)
    p = np.pad(out, [*lead, (r, r), (0, 0)], mode="reflect")
    acc = g[0] * p[..., 0:h, :]
    for i in range(1, g.size):
        acc += g[i] * p[..., i : i + h, :]
    p = np.pad(acc, [*lead, (0, 0), (r, r)], mode="reflect")
    acc = g[0] * p[..., 0:w]
    for i in range(1, g.size):
        acc += g[i] * p[..., i : i + w]
    return acc


def _blur_small(out: np.ndarray, g: np.ndarray) -> np.ndarray:
    r = g.size // 2
    for axis in (-2, -1):
        n = out.shape[axis]
        idx = np.abs(np.arange(-r, n + r))
        if n > 1:
            period = 2 * (n - 1)
            idx = idx % period
            idx = np.where(idx >= n, period - idx, idx)
        else:
            idx = np.zeros_like(idx)
        padded = np.take(out, idx, axis=axis)
        out = sum(gi * np.take(padded, np.arange(i, i + n), axis=axis) for i, gi in enumerate(g))
    return out


def filter_grid(max_window: int = MAX_WINDOW) -> Iterable[CausalFilter]:
    """The filters ``train`` and the guard choose from: windows 1-16 and exponential decays, each
    with a Gaussian of 0-3 px."""
    sigmas = (0.0, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
    windows = [w for w in (1, 2, 3, 4, 5, 6, 8, 10, 12, 16) if w <= max_window]
    for w in windows:
        for s in sigmas:
            yield CausalFilter(w, s)
    for decay in (0.5, 0.7, 0.8, 0.85, 0.9):
        for s in sigmas:
            yield CausalFilter(max_window, s, decay)
