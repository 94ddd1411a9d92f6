"""The two image domains of Noise2Atom (paper, section "Implementation details", "Datasets").

* Domain C, clean atomic images, simulated on the fly (no files). ``paper`` (:class:`CleanDomain`):
  75-150 atomic positions in a 256 x 256 lattice, 1-4 atoms on each, convolved with a 33 x 33
  Gaussian kernel of random variance in [1, 10], the central 128 x 128 crop, scaled to the
  generator's tanh range with the background at -1 and the brightest peak of the crop at +1.
  ``fitted`` (:class:`FittedDomain`, not in the paper, issue 19): the same scaling, with what the
  user's movie holds (:func:`livedenoise.analysis.estimate_content`): atoms or columns at its
  local density and closest spacing, of its width and brightness spread, in edges and particles
  (:func:`clean_domain` chooses, and falls back to the paper's where the movie is like it).
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

from livedenoise.analysis import SampleContent
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


#: The paper's Domain C holds 75-150 peaks per 256^2 px; a movie up to twice that dense, without a
#: lattice and with peaks of a width its variance range covers, trains on the paper's generator.
PAPER_MAX_DENSITY = 2 * 150 / LATTICE**2
PAPER_SIGMA = (0.7, 3.5)
DOMAINS = ("fitted", "paper")


class FittedDomain:
    """Domain C fitted to a movie's :class:`~livedenoise.analysis.SampleContent` (issue 19).

    Each sample is scaled like the paper's (background -1, brightest peak +1) and holds atoms or
    columns with the movie's local statistics, in one of three regions: the whole crop, up to an
    edge (a half-plane empty), or a particle in projection (a disc whose columns brighten with the
    chord through it: thickness). Two kinds of scene:

    * **scattered** (``1 - lattice_share`` of the samples): positions at random with a hard core
      (never closer than the lattice's closest pair of sites, or 0.7 of a hexagonal packing's
      spacing; at least 2 sigma), at the local density (the lattice's sites per cell area, or the
      measured density) 0.6-1.5 times, brightness drawn from the measured deciles;
    * **lattice** (``lattice_share``, where the movie shows one): the measured cell (rotated by up
      to 4 degrees, scaled by up to 3 %) with its motif and the motif's brightness.

    Both get 0-8 % vacancies, 0-8 % substitutions (0.4-2.5 times as bright), a few brighter
    adatoms and 0.1 px of position noise. Peak widths: the measured sigma, variance 0.7-1.4 times
    (the paper draws 1-10 px^2).

    ``lattice_share`` is 0 by default, measured: trained on a simulated MoS2 movie, lattice scenes
    in 85 % of the samples made Ms2c draw the lattice where there is none (in a hole of the
    sample) and scored column F1 0.56 against 0.73 for scattered scenes with the same local
    statistics (docs/training.md); a periodic Domain C lets Ms2c satisfy the critic with a lattice
    of its own, which the cycle loss does not prevent.
    """

    def __init__(self, content: SampleContent, crop: int = 128, lattice_share: float = 0.0):
        self.content = content
        self.crop = crop
        self.lattice_share = float(lattice_share)
        self.sigma = float(np.clip(content.width_px, 0.5, 4.0))
        self.basis = np.asarray(content.basis, np.float64).reshape(-1, 2)
        self.motif = np.asarray(content.motif, np.float64).reshape(-1, 3)
        self.lattice = bool(content.lattice and self.basis.shape == (2, 2) and 1 <= len(self.motif) <= 12)
        deciles = np.asarray(content.brightness or (1.0,), np.float64)
        self.deciles = np.clip(deciles / max(deciles.max(), 1e-6), 0.05, 1.0)
        # where the movie holds a lattice, its local density (the measured one counts the empty
        # parts of the field too: the support around a particle, a hole)
        cell = abs(float(np.linalg.det(self.basis))) if self.lattice else 0.0
        self.density = max(len(self.motif) / cell if cell > 0 else content.density_px, 1e-4)
        packing = 0.7 / np.sqrt(self.density)
        self.min_distance = max(2 * self.sigma, min(self._closest_sites() or packing, packing * 1.5), 0.6 * packing)

    def _closest_sites(self) -> float | None:
        if not self.lattice:
            return None
        shifts = np.array([[i, j] for i in (-1, 0, 1) for j in (-1, 0, 1)], np.float64) @ self.basis
        sites = self.motif[:, :2] @ self.basis
        d = np.hypot(*(sites[:, None, None, :] + shifts[None, None] - sites[None, :, None, :]).reshape(-1, 2).T)
        return 0.85 * float(d[d > 1e-6].min())

    def _cells(self, basis: np.ndarray, origin: np.ndarray, size: float) -> np.ndarray:
        """Integer cell indices whose origins can fall within ``size`` px around the crop."""
        corners = np.array([[-size, -size], [2 * size, -size], [-size, 2 * size], [2 * size, 2 * size]]) - origin
        frac = corners @ np.linalg.inv(basis)
        lo, hi = np.floor(frac.min(0)).astype(int), np.ceil(frac.max(0)).astype(int)
        i, j = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), indexing="ij")
        return np.stack([i.ravel(), j.ravel()], axis=1).astype(np.float64)

    def _lattice(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        c = self.crop
        ang = np.deg2rad(rng.uniform(-4, 4))
        rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
        basis = self.basis @ rot.T * rng.uniform(0.97, 1.03)
        origin = rng.uniform(0, c, 2)
        cells = self._cells(basis, origin, c / 2)
        pos = np.concatenate([(cells + m[:2]) @ basis + origin for m in self.motif])
        amp = np.concatenate([np.full(len(cells), m[2]) for m in self.motif])
        keep = np.all((pos > -6) & (pos < c + 6), axis=1)
        return pos[keep], amp[keep] * rng.normal(1.0, 0.05, keep.sum())

    def _scattered(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        side = self.crop + 12
        n = rng.poisson(self.density * rng.uniform(0.6, 1.5) * side**2)
        pos = _hard_core(rng.uniform(-6, self.crop + 6, (3 * n + 1, 2)), self.min_distance)[:n]
        levels = np.interp(rng.uniform(0.05, 0.95, len(pos)), np.linspace(0.1, 0.9, len(self.deciles)), self.deciles)
        return pos, levels

    def _scene(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        c = self.crop
        lattice = self.lattice and rng.random() < self.lattice_share
        pos, amp = self._lattice(rng) if lattice else self._scattered(rng)
        region = rng.random()
        if region < 0.3:  # a particle in projection: thickness = the chord through a sphere
            centre, radius = rng.uniform(0.25 * c, 0.75 * c, 2), rng.uniform(0.2, 0.6) * c
            r = np.hypot(*(pos - centre).T) / radius
            inside = r < 1
            pos, amp = pos[inside], amp[inside] * (0.25 + 0.75 * np.sqrt(1 - r[inside] ** 2))
        elif region < 0.55:  # an edge or a hole's border: a half-plane of the crop is empty
            normal = rng.normal(size=2)
            normal /= np.hypot(*normal)
            inside = (pos - c / 2) @ normal < rng.uniform(-0.3, 0.3) * c
            pos, amp = pos[inside], amp[inside]
        else:  # a slow thickness (or tilt) variation over the field
            k = rng.normal(0, 1.5 / c, 2)
            amp = amp * (1 + rng.uniform(0, 0.25) * np.cos(2 * np.pi * pos @ k + rng.uniform(0, 2 * np.pi)))
        vacant = rng.random(len(pos)) < rng.uniform(0, 0.08)
        pos, amp = pos[~vacant], amp[~vacant]
        swap = rng.random(len(pos)) < rng.uniform(0, 0.08)
        amp[swap] *= rng.uniform(0.4, 2.5, swap.sum())
        n_ad = rng.poisson(0.7)
        top = float(amp.max()) if len(amp) else 1.0
        pos = np.concatenate([pos + rng.normal(0, 0.1, pos.shape), rng.uniform(0, c, (n_ad, 2))])
        return pos, np.concatenate([amp, top * rng.uniform(1.0, 2.0, n_ad)])

    def sample(self, n: int, rng: np.random.Generator) -> torch.Tensor:
        from livedenoise.sim import render_atoms

        out = np.empty((n, 1, self.crop, self.crop), np.float32)
        for i in range(n):
            pos, amp = self._scene(rng)
            sigma = self.sigma * float(np.sqrt(rng.uniform(0.7, 1.4)))
            img = render_atoms(pos, self.crop, sigma=sigma, peak=np.maximum(amp, 0.0)) if len(pos) else np.zeros((self.crop,) * 2, np.float32)
            out[i, 0] = 2.0 * img / max(float(img.max()), 1e-12) - 1.0
        return torch.from_numpy(out)


def _hard_core(points: np.ndarray, distance: float) -> np.ndarray:
    """``points`` less every one within ``distance`` (to the pixel) of an earlier one kept: dart
    throwing on an occupancy raster, a few ms for a crop's hundreds of atoms."""
    if len(points) < 2:
        return points
    r = int(np.ceil(distance))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disc = np.hypot(yy, xx) < distance
    lo = points.min(axis=0)
    cells = np.rint(points - lo).astype(int) + r
    taken = np.zeros(tuple(cells.max(axis=0)[::-1] + r + 1), bool)
    keep = np.zeros(len(points), bool)
    for k, (x, y) in enumerate(cells):
        if not taken[y, x]:
            keep[k] = True
            taken[y - r : y + r + 1, x - r : x + r + 1] |= disc
    return points[keep]


def paper_like(content: SampleContent) -> bool:
    """Is the movie like the paper's world: no lattice, at most :data:`PAPER_MAX_DENSITY` peaks
    per px^2, a width in :data:`PAPER_SIGMA` (sparse atoms, what Noise2Atom was made for)?"""
    return (not content.lattice and content.density_px <= PAPER_MAX_DENSITY
            and PAPER_SIGMA[0] <= content.width_px <= PAPER_SIGMA[1])


def clean_domain(choice: str, content: SampleContent | None, crop: int = 128,
                 variance: tuple[float, float] = (1.0, 10.0)) -> tuple[CleanDomain | FittedDomain, str]:
    """Domain C for ``choice`` ("fitted" or "paper") and a line saying which and why.

    ``fitted`` is the paper's generator where the movie is like its world (no lattice, at most
    :data:`PAPER_MAX_DENSITY` peaks per px^2, a width in :data:`PAPER_SIGMA`), so a sparse movie
    trains exactly as before; and where the estimate is not reliable (too few frames or too
    little signal), with that reason.
    """
    if choice not in DOMAINS:
        raise LivedenoiseError(f"--domain {choice!r}: choose {' or '.join(DOMAINS)}")
    if choice == "paper":
        return CleanDomain(crop, variance), "Domain C: the paper's generator (--domain paper)"
    if content is None or not content.reliable:
        why = content.note if content is not None else "no estimate"
        return CleanDomain(crop, variance), f"Domain C: cannot estimate the sample from this movie ({why}); the paper's generator"
    if paper_like(content):
        return CleanDomain(crop, variance), f"Domain C: the movie is like the paper's world ({content.describe()}); the paper's generator"
    return FittedDomain(content, crop), f"Domain C fitted to the movie: {content.describe()}"


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
