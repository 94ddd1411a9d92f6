"""The virtual detectors a 4D-STEM stream is reduced with: an :class:`Annulus` around the direct
beam (:func:`annular_mask`, its centre found by :func:`find_centre` where not given) or
:class:`Weights` from a mask file (:func:`read_mask`). :class:`~livedenoise.detectors.VirtualDetector`
reduces with them, the configs (:class:`~livedenoise.detectors.ScanConfig`) declare them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import LivedenoiseError


def annular_mask(shape: tuple[int, int], centre: tuple[float, float], inner: float, outer: float) -> np.ndarray:
    """Boolean ``(height, width)`` mask of the pixels with ``inner <= r < outer`` around ``centre``
    (``(x, y)`` = (column, row), pixel centres at integers).

    >>> annular_mask((3, 3), (1.0, 1.0), 0.5, 1.2).astype(int).tolist()
    [[0, 1, 0], [1, 0, 1], [0, 1, 0]]
    """
    h, w = shape
    y, x = np.ogrid[:h, :w]
    r = np.hypot(x - centre[0], y - centre[1])
    return (r >= inner) & (r < outer)


def find_centre(frames: np.ndarray) -> tuple[float, float]:
    """The direct beam's centre ``(x, y)`` in a stack of diffraction patterns ``(N, H, W)``: the
    centroid of the pixels above half the mean pattern's maximum (the bright-field disc), so the
    noise and the dark-field counts far out do not pull it. A dark stack: the frame's middle."""
    mean = np.asarray(frames, np.float64).reshape(-1, *frames.shape[-2:]).mean(axis=0)
    h, w = mean.shape
    top = mean.max()
    if not np.isfinite(top) or top <= 0:
        return (w - 1) / 2, (h - 1) / 2
    weight = np.where(mean >= top / 2, mean, 0.0)
    total = weight.sum()
    return float((weight.sum(axis=0) * np.arange(w)).sum() / total), float((weight.sum(axis=1) * np.arange(h)).sum() / total)


def read_mask(path: Path) -> np.ndarray:
    """A mask file as float32 weights: ``.npy`` (no pickle) or ``.tif``/``.tiff``, one 2-D image."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif suffix in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(path)
        else:
            raise LivedenoiseError(f"--mask {path}: expected a .npy or .tif file")
    except (OSError, ValueError) as exc:
        raise LivedenoiseError(f"--mask {path}: cannot read it ({exc})") from None
    arr = np.squeeze(np.asarray(arr))
    if arr.ndim != 2 or arr.dtype.kind not in "biuf" or not np.all(np.isfinite(arr)):
        raise LivedenoiseError(f"--mask {path}: expected one 2-D image of finite numbers, got {arr.shape} {arr.dtype}")
    if not np.any(arr):
        raise LivedenoiseError(f"--mask {path}: every weight is 0")
    return arr.astype(np.float32)


@dataclass(frozen=True, slots=True)
class Annulus:
    """A virtual annular detector: the pixels with ``inner <= r < outer`` (detector pixels) around
    the direct beam. ``name``: how its images are labelled (default ``annulus INNER-OUTER``)."""

    inner: float
    outer: float
    name: str = ""

    def __post_init__(self) -> None:
        if not (0 <= self.inner < self.outer):
            raise LivedenoiseError(f"annulus {self.inner:g}:{self.outer:g}: expected 0 <= INNER < OUTER, in pixels")

    @property
    def label(self) -> str:
        return self.name or f"annulus {self.inner:g}-{self.outer:g}"


@dataclass(frozen=True, slots=True, eq=False)
class Weights:
    """A virtual detector given as its weights, ``(H, W)`` (0/1 or any weights; :func:`read_mask`)."""

    weights: np.ndarray
    name: str = "mask"

    @property
    def label(self) -> str:
        return self.name
