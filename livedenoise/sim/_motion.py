"""A moving acquisition of any clean image: drift, scan jitter, a scene change, a decaying dose.

A static scene lets a long frame mean win without learning anything, and real stages drift, so
the evaluation movies of issue 24 move. The scanned field (``field`` x ``field`` pixels) is a
window onto a larger clean image (a real ADF image, or a rendered simulation, one image per frame
when the scene itself moves); per frame its top-left corner sits at

    start + drift path (``drift`` px/frame in ``direction``, turning by ``turn`` deg/frame)
          + ``jump`` from frame ``scene_change`` on + Gaussian scan jitter (``jitter`` px per axis),

so the sample appears to move the other way. The window is cut at that sub-pixel offset by
bicubic (Keys, a = -0.5) interpolation of the clean image, the dose falls exponentially by
``dose_decay`` over the movie, and :func:`~._noise.acquire` turns the expected counts into
detector counts. A window that would leave the image raises: a crop padded with made-up pixels
would be a different sample. numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._noise import NoiseConfig, acquire

__all__ = ["MotionConfig", "MovingMovie", "acquire_moving", "measure_shift"]


@dataclass(frozen=True, slots=True)
class MotionConfig:
    """How the scanned field moves over the clean image; lengths in the image's pixels.

    ``direction`` is the direction the field moves over the sample (0 = +x along the scan lines,
    90 = +y); ``jump`` (x, y) is added to the field's position from frame ``scene_change`` on
    (``None``: no scene change). ``dose_decay``: the fraction of the dose lost by the last frame.
    ``start``: the field's top-left (x, y) in frame 0; ``None`` centres the whole path in the image.
    """

    frames: int = 112
    field: int = 128
    drift: float = 0.2  # px per frame
    direction: float = 0.0  # degrees
    turn: float = 0.0  # degrees per frame, the drift direction turning slowly
    jitter: float = 0.1  # px, std per axis of an independent scan offset per frame
    scene_change: int | None = None
    jump: tuple[float, float] = (48.0, 0.0)
    dose_decay: float = 0.0
    start: tuple[float, float] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.frames < 1 or self.field < 8:
            raise ValueError(f"motion: need frames >= 1 and a field of >= 8 px, got {self.frames}, {self.field}")
        if not (self.drift >= 0 and self.jitter >= 0 and 0 <= self.dose_decay < 1):
            raise ValueError(f"motion: need drift >= 0, jitter >= 0, 0 <= dose_decay < 1, got {self}")
        if self.scene_change is not None and not 1 <= self.scene_change < self.frames:
            raise ValueError(f"motion: scene_change {self.scene_change} is not a frame after the first")

    def path(self) -> np.ndarray:
        """The field's planned (x, y) displacement per frame from frame 0: drift and jump, no jitter."""
        angle = np.deg2rad(self.direction + self.turn * np.arange(self.frames - 1))
        steps = self.drift * np.stack([np.cos(angle), np.sin(angle)], axis=1)
        p = np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)])
        if self.scene_change is not None:
            p[self.scene_change :] += np.asarray(self.jump, np.float64)
        return p

    def dose_scale(self) -> np.ndarray:
        """The dose of each frame relative to the first: exponential, ``1 - dose_decay`` at the last."""
        t = np.arange(self.frames) / max(self.frames - 1, 1)
        return (1.0 - self.dose_decay) ** t


@dataclass(frozen=True, slots=True)
class MovingMovie:
    """``noisy``: (T, F, F) float32 detector counts; ``truth``: (T, F, F) float32 expected counts
    (the dose decay in, the scan-line shifts not); ``offsets``: (T, 2) [x, y] of the field's
    top-left corner in the clean image; ``dose_scale``: (T,); ``positions``: (T, K, 2) float32
    [x, y] in field pixels, NaN where a column is outside the field (``None`` when none were given)."""

    noisy: np.ndarray
    truth: np.ndarray
    offsets: np.ndarray
    dose_scale: np.ndarray
    positions: np.ndarray | None = None


def _keys(frac: float) -> np.ndarray:
    """Bicubic (Keys, a = -0.5) weights of the 4 samples at -1, 0, 1, 2 for a point ``frac`` in [0, 1)."""
    d = np.abs(np.array([-1.0, 0.0, 1.0, 2.0]) - frac)
    a = -0.5
    return np.where(d <= 1, (a + 2) * d**3 - (a + 3) * d**2 + 1, np.where(d < 2, a * (d**3 - 5 * d**2 + 8 * d - 4), 0.0))


def _crop(image: np.ndarray, x: float, y: float, n: int) -> np.ndarray:
    """The ``n`` x ``n`` window whose top-left pixel centre is at (x, y) of ``image``, bicubic."""
    ix, iy = math.floor(x), math.floor(y)
    wx, wy = _keys(x - ix), _keys(y - iy)
    img = np.asarray(image, np.float64)
    rows = sum(wy[k] * img[iy - 1 + k : iy - 1 + k + n, ix - 1 : ix + n + 2] for k in range(4))
    return sum(wx[k] * rows[:, k : k + n] for k in range(4))


def acquire_moving(
    image: np.ndarray,
    motion: MotionConfig,
    noise: NoiseConfig,
    positions: np.ndarray | None = None,
) -> MovingMovie:
    """A moving acquisition of a clean ``image``: (H, W) for a static sample, or (T, H, W), one per
    frame, for a scene that moves by itself; in units of the signal of ``noise`` (expected counts =
    ``noise.dose`` x dose scale x image + pedestal). ``positions``: the columns' [x, y] in image
    pixels, (K, 2) or (T, K, 2), returned in field pixels. Deterministic for ``motion.seed``.

    Raises ``ValueError`` when the field would leave the image in any frame (jitter included).
    """
    img = np.asarray(image)
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[0] != motion.frames):
        raise ValueError(f"image must be (H, W) or ({motion.frames}, H, W), got shape {img.shape}")
    h, w = img.shape[-2:]
    n = motion.field
    path = motion.path()
    if motion.start is None:  # centre the planned path's bounding box in the room the image leaves
        lo, hi = path.min(axis=0), path.max(axis=0)
        room = np.array([w - n - 3, h - n - 3], np.float64)
        start = 1.0 + (room - (hi - lo)) / 2 - lo
    else:
        start = np.asarray(motion.start, np.float64)
    rng = np.random.default_rng(motion.seed)
    offsets = start + path + rng.normal(0.0, motion.jitter, (motion.frames, 2))
    fx, fy = np.floor(offsets[:, 0]), np.floor(offsets[:, 1])
    bad = np.flatnonzero((fx < 1) | (fy < 1) | (fx > w - n - 2) | (fy > h - n - 2))
    if bad.size:
        t = int(bad[0])
        raise ValueError(
            f"the {n} x {n} field leaves the {w} x {h} image at frame {t} (top-left x {offsets[t, 0]:.1f}, "
            f"y {offsets[t, 1]:.1f}; bicubic needs 1 to {w - n - 2} and {h - n - 2}): a larger image, less drift "
            "or a smaller jump"
        )
    clean = np.stack([_crop(img if img.ndim == 2 else img[t], *offsets[t], n) for t in range(motion.frames)])
    scale = motion.dose_scale()
    truth = np.stack([noise.expected(clean[t], float(scale[t])) for t in range(motion.frames)]).astype(np.float32)
    noisy = acquire(clean, noise, rng, dose_scale=scale)
    pos = None
    if positions is not None:
        p = np.asarray(positions, np.float64)
        p = np.broadcast_to(p, (motion.frames, *p.shape)) if p.ndim == 2 else p
        if p.shape[0] != motion.frames or p.shape[-1] != 2:
            raise ValueError(f"positions must be (K, 2) or ({motion.frames}, K, 2), got shape {p.shape}")
        p = p - offsets[:, None, :]
        outside = np.any((p < -0.5) | (p > n - 0.5), axis=-1)
        pos = np.where(outside[..., None], np.nan, p).astype(np.float32)
    return MovingMovie(noisy, truth, offsets, scale, pos)


def measure_shift(a: np.ndarray, b: np.ndarray, upsample: int = 20, lowpass: float = 0.1) -> tuple[float, float]:
    """How far the content of frame ``b`` moved from frame ``a``, (dx, dy) in pixels: phase
    correlation (Hann window; the cross-power spectrum divided by the square root of its modulus,
    since the fully whitened one, windowed, pulls sub-pixel shifts towards 0 by up to half; a
    Gaussian low-pass of ``lowpass`` cycles/px against noise and against pixel-scale texture,
    whose interpolated shift is no pure shift), refined on a ``1 / upsample`` pixel grid by a matrix DFT around its peak, then a parabola. Within half a period on a
    lattice (larger shifts alias); the tests and the benchmarks measure the motion back with it.
    """
    fa = np.asarray(a, np.float64)
    fb = np.asarray(b, np.float64)
    if fa.shape != fb.shape or fa.ndim != 2:
        raise ValueError(f"measure_shift needs two frames of one shape, got {fa.shape} and {fb.shape}")
    h, w = fa.shape
    win = np.outer(np.hanning(h), np.hanning(w))
    cross = np.fft.fft2((fb - fb.mean()) * win) * np.conj(np.fft.fft2((fa - fa.mean()) * win))
    cross /= np.sqrt(np.maximum(np.abs(cross), 1e-24))  # half-whitened: full whitening + a window is biased to 0
    k2 = np.fft.fftfreq(h)[:, None] ** 2 + np.fft.fftfreq(w)[None, :] ** 2
    cross *= np.exp(-k2 / (2 * lowpass**2))
    corr = np.fft.ifft2(cross).real
    iy, ix = np.unravel_index(int(np.argmax(corr)), corr.shape)
    y0, x0 = (iy - h if iy > h // 2 else iy), (ix - w if ix > w // 2 else ix)
    grid = np.arange(-upsample, upsample + 1) / upsample
    ys, xs = y0 + grid, x0 + grid
    ey = np.exp(2j * np.pi * np.outer(ys, np.fft.fftfreq(h)))
    ex = np.exp(2j * np.pi * np.outer(np.fft.fftfreq(w), xs))
    up = (ey @ cross @ ex).real
    j, i = np.unravel_index(int(np.argmax(up)), up.shape)

    def refine(c: np.ndarray, k: int) -> float:
        if 0 < k < len(c) - 1:
            den = c[k - 1] - 2 * c[k] + c[k + 1]
            if den < 0:
                return 0.5 * (c[k - 1] - c[k + 1]) / den
        return 0.0

    return float(xs[i] + refine(up[j], i) / upsample), float(ys[j] + refine(up[:, i], j) / upsample)
