"""The two image domains of Noise2Atom (paper, section "Implementation details", "Datasets").

* Domain C, clean atomic images, simulated on the fly (no files): 75-150 atomic positions in a
  256 x 256 lattice, 1-4 atoms on each, convolved with a 33 x 33 Gaussian kernel of random
  variance in [1, 10], the central 128 x 128 crop, scaled to the generator's tanh range with the
  background at -1 and the brightest peak of the crop at +1.
* Domain S, the user's noisy frames: a multi-page TIFF (or ``.npy``) of frames of any size
  >= 128 x 128, a random sample of about 120 of them, random 128 x 128 crops, normalised with
  :func:`livedenoise.engine.normalise`, the very function ``serve`` applies.

Normalisation statistics (fixed at training time, stored in the model card):
``offset`` = median of the sampled frames (the background level; after the optional background
flattening, the median of the flattened frames), ``scale`` = 1 / (p99.9 - offset) where p99.9 is
the 99.9th percentile of the same pixels, so the background sits near 0 and the brightest atomic
pixels near +1, whatever the detector's units. Quantiles rather than min/max: a few hot pixels do
not move them. A degenerate spread (p99.9 == median, e.g. almost empty counts) falls back to the
standard deviation.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.nn import functional as F

from livedenoise.engine import Normalisation, causal_windows, normalise
from livedenoise.errors import LivedenoiseError
from livedenoise.io import open_movie

from .networks import gaussian_kernel

MIN_SIZE = 128
LATTICE = 256


class CleanDomain:
    """Domain C: a batch of simulated clean atomic images in [-1, 1] on demand."""

    def __init__(self, crop: int = 128, variance: tuple[float, float] = (1.0, 10.0), kernel: int = 33):
        self.crop = crop
        self.variance = variance
        self.kernel = kernel

    def sample(self, n: int, rng: np.random.Generator) -> torch.Tensor:
        half = self.kernel // 2
        # Only the central crop is kept, and the kernel reaches `half` pixels: convolving the
        # central (crop + 2 half)^2 window of the lattice, valid, gives exactly that crop.
        lo = (LATTICE - self.crop) // 2 - half
        side = self.crop + 2 * half
        lattice = np.zeros((n, side, side), np.float32)
        kernels = np.empty((n, 1, self.kernel, self.kernel), np.float32)
        for i in range(n):
            count = rng.integers(75, 151)
            pos = rng.integers(0, LATTICE, size=(count, 2)) - lo
            atoms = rng.integers(1, 5, size=count).astype(np.float32)
            inside = np.all((pos >= 0) & (pos < side), axis=1)
            np.add.at(lattice[i], (pos[inside, 0], pos[inside, 1]), atoms[inside])
            variance = rng.uniform(*self.variance)
            kernels[i, 0] = gaussian_kernel(self.kernel, float(np.sqrt(variance))).numpy()
        x = torch.from_numpy(lattice)[None]  # (1, n, side, side): one group per sample
        y = F.conv2d(x, torch.from_numpy(kernels), groups=n)[0]  # (n, crop, crop)
        peak = y.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
        return (2.0 * y / peak - 1.0)[:, None]


def load_frames(path: str | Path) -> np.ndarray:
    """The training movie (:func:`load_movie` without its pixel size)."""
    return load_movie(path)[0]


class TrainingMovie(NamedTuple):
    frames: np.ndarray  # (T, H, W), T >= 2
    pixel_size_nm: float | None
    single_image: bool = False  # frames are the tiles of one image


def load_movie(path: str | Path, signal: str | None = None) -> TrainingMovie:
    """The training movie (:func:`livedenoise.io.open_movie`: any format it reads), checked for
    what training needs: at least 2 frames of at least ``MIN_SIZE`` pixels, all finite; and its
    pixel size in nm (None where the file does not say), for the model card.

    A single image (a vendor's one HAADF frame) of at least ``2 * MIN_SIZE`` a side comes back as
    its tiles (:func:`tile_image`), with ``single_image`` set: it has no time axis for a temporal
    preset or the distillation."""
    movie = open_movie(path, "frames", signal=signal)
    frames = movie.data if isinstance(movie.data, np.ndarray) else movie.read()
    t, h, w = frames.shape
    single = False
    if t < 2:
        if min(h, w) < 2 * MIN_SIZE:
            raise LivedenoiseError(
                f"{path} holds a single frame of {h}x{w}; training needs a movie of at least 2 frames (about 120), "
                f"or one image of at least {2 * MIN_SIZE}x{2 * MIN_SIZE}"
            )
        frames = tile_image(frames[0])
        h, w = frames.shape[1:]
        single = True
    if h < MIN_SIZE or w < MIN_SIZE:
        raise LivedenoiseError(f"{path}: frames are {h}x{w}, training needs frames of at least {MIN_SIZE}x{MIN_SIZE}")
    if frames.dtype.kind == "f" and not np.isfinite(frames).all():
        raise LivedenoiseError(f"{path} contains NaN or infinite pixels; clean or crop them out before training")
    return TrainingMovie(frames, movie.pixel_size_nm, single)


def tile_image(image: np.ndarray) -> np.ndarray:
    """One large image as ``(n*n, H/n, W/n)`` tiles, n from 2 to 4 (tiles of 256 px or more where the image allows).

    Domain S is random crops of frames, so a large single image trains as well as the stack of its
    tiles (only crops across a tile border are lost); what a single image cannot give is time, so
    temporal presets and the distillation need a movie.

    >>> tile_image(np.zeros((512, 600))).shape
    (4, 256, 300)
    """
    h, w = image.shape
    n = max(2, min(4, min(h, w) // (2 * MIN_SIZE)))
    th, tw = h // n, w // n
    return np.stack([image[i * th : (i + 1) * th, j * tw : (j + 1) * tw] for i in range(n) for j in range(n)])


def frame_statistics(frames: np.ndarray, flatten_sigma: float | None = None) -> Normalisation:
    """The normalisation rule of this module's docstring (median and 99.9th percentile)."""
    offset = float(np.median(frames))
    centred = normalise(frames, Normalisation(offset=offset, scale=1.0, flatten_sigma=flatten_sigma))
    if flatten_sigma:
        # After flattening the background is ~0 already; re-centre on what remains.
        extra = float(np.median(centred))
        offset += extra
        centred -= extra
    spread = float(np.percentile(centred, 99.9))
    if not spread > 1e-6:
        spread = float(centred.std()) * 3.0
    if not spread > 1e-12:
        raise LivedenoiseError("the training frames are constant; nothing to learn from")
    return Normalisation(offset=offset, scale=1.0 / spread, flatten_sigma=flatten_sigma)


class NoisyDomain:
    """Domain S: random crops of the (sampled, normalised) training frames.

    ``frames`` is ``(T, H, W)``, or ``(T, k, H, W)`` causal windows for a ``k``-frame preset
    (:func:`livedenoise.engine.causal_windows`); a sample is ``(n, k, crop, crop)``, every
    frame of a window cropped at the same place.
    """

    def __init__(self, frames: np.ndarray, norm: Normalisation, crop: int = 128):
        frames = np.asarray(frames)
        self.frames = normalise(frames[:, None] if frames.ndim == 3 else frames, norm)
        self.crop = crop

    def sample(self, n: int, rng: np.random.Generator) -> torch.Tensor:
        t, _, h, w = self.frames.shape
        idx = rng.integers(0, t, size=n)
        ys = rng.integers(0, h - self.crop + 1, size=n)
        xs = rng.integers(0, w - self.crop + 1, size=n)
        out = np.stack([self.frames[i, :, y : y + self.crop, x : x + self.crop] for i, y, x in zip(idx, ys, xs)])
        return torch.from_numpy(out)


def sample_frames(
    frames: np.ndarray, count: int, rng: np.random.Generator, input_frames: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """A random sample of ``count`` frames (all of them when there are fewer), in time order.

    Returns ``(T, H, W)`` float32 frames, or for ``input_frames`` = k > 1 their ``(T, k, H, W)``
    causal windows (each sampled frame with the k - 1 frames before it), and the indices.
    """
    t = frames.shape[0]
    idx = np.sort(rng.choice(t, size=min(count, t), replace=False))
    return gather(frames, idx, input_frames), idx


def gather(frames: np.ndarray, idx: np.ndarray, input_frames: int = 1) -> np.ndarray:
    """Frames ``idx`` of a movie as float32, as causal windows when ``input_frames`` > 1."""
    if input_frames > 1:
        return np.asarray(causal_windows(frames, input_frames, idx), dtype=np.float32)
    return np.asarray(frames[idx], dtype=np.float32)
