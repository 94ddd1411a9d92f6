"""What a movie's clean images contain, estimated from its noisy frames (issue 19).

Noise2Atom's Domain C is one picture of the world (sparse Gaussian peaks); a model trained on it
turns whatever it sees into that picture. :func:`estimate_content` measures, on the mean of a
window of raw frames, what the picture should be instead: the density of atoms or atomic columns,
their width, their brightness spread, and whether they sit on a lattice (a Bragg peak in the
power spectrum), with the lattice's basis vectors and motif. The trainer fits Domain C to it
(``trainer.domains.FittedDomain``); the card keeps it, and ``serve`` and ``denoise`` compare a
stream's estimate with it (the guard).

The rules, on the mean ``m`` of up to ``window`` consecutive frames:

* **noise** of ``m``: the robust spread of consecutive-frame differences (MAD), over sqrt(2 n);
  for a single image, the MAD of ``m`` minus its 3 x 3 mean, rescaled to white noise;
* **peaks**: local maxima (5 x 5) of ``m`` smoothed by a Gaussian of 1 px, higher than
  ``PEAK_Z`` times the smoothed noise above the background (the 25th percentile of the smoothed
  mean); density = peaks per px^2 of the frame less a 3 px border;
* **width**: the averaged 7 x 7 patch around the peaks, its log-ratio fall-off over radii 1,
  sqrt 2 and 2 gives sigma^2, less the 1/12 px^2 the pixel grid adds;
* **lattice**: the strongest power-spectrum peak (periods 2.5 px to a quarter of the frame)
  ``LATTICE_RATIO`` times the median power at its radius or more; the basis is the reciprocal of
  the two strongest non-collinear peaks, and the motif the modes of the peaks' positions folded
  into one cell.

numpy only: the daemon runs it (off the hot path).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ._atoms import local_maxima

__all__ = ["SampleContent", "estimate_content"]

#: Height above background, in noise standard deviations of the smoothed mean, that counts as a peak.
PEAK_Z = 5.0
#: Bragg peak power over the median power at its spatial frequency that counts as a lattice.
LATTICE_RATIO = 40.0
#: Fewer peaks than this, or a median peak below ``MIN_SNR`` noise: the estimate is not reliable.
MIN_PEAKS = 10
MIN_SNR = 4.0
_SMOOTH = 1.0  # px, the peak-finding Gaussian
_BORDER = 3


@dataclass(frozen=True, slots=True)
class SampleContent:
    """What the clean images of a movie hold: atoms or columns, their density, width and counts.

    ``basis`` (px, rows ``[x, y]``) and ``motif`` (``[fx, fy, relative brightness]`` per site in
    fractional coordinates of the basis) describe the lattice where one was found.
    ``brightness`` holds the deciles 10..90 of the peak heights over the brightest decile's,
    which the fitted Domain C draws from.
    """

    density_px: float
    density_nm2: float | None
    width_px: float
    peak_counts: float
    background_counts: float
    lattice: bool
    spacing_px: float | None
    frames: int
    reliable: bool
    note: str = ""
    peaks: int = 0
    snr: float = 0.0
    brightness: tuple[float, ...] = ()
    basis: tuple[tuple[float, float], ...] = ()
    motif: tuple[tuple[float, float, float], ...] = ()
    lattice_ratio: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        raw = asdict(self)
        for key in ("brightness", "basis", "motif"):
            raw[key] = np.asarray(raw[key], float).round(4).tolist()
        return raw

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SampleContent:
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        known["brightness"] = tuple(float(v) for v in known.get("brightness", ()))
        known["basis"] = tuple(tuple(float(x) for x in v) for v in known.get("basis", ()))
        known["motif"] = tuple(tuple(float(x) for x in v) for v in known.get("motif", ()))
        return cls(**known)

    def describe(self) -> str:
        """One line for a log: ``0.82 atoms/nm² (1.3e-03 /px²), sigma 1.0 px, peaks 2.4 counts``."""
        if self.density_nm2 is not None:
            dens = f"{self.density_nm2:.3g} atoms/nm² ({self.density_px:.2g}/px²)"
        else:
            dens = f"{self.density_px * 100:.3g} atoms per 100 px²"
        lat = f", on a lattice (cell {self.spacing_px:.2f} px, {len(self.motif)} sites in it)" if self.lattice else ""
        rel = "" if self.reliable else f" [not reliable: {self.note}]"
        return f"{dens}, sigma {self.width_px:.2f} px, peaks {self.peak_counts:.3g} counts over {self.background_counts:.3g}{lat}{rel}"


def _gauss_smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur, edges reflected (numpy only)."""
    r = max(1, int(np.ceil(3 * sigma)))
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-(x**2) / (2 * sigma**2))
    k /= k.sum()
    pad = np.pad(image.astype(np.float64), r, mode="reflect")
    rows = sum(k[i] * pad[:, i : i + image.shape[1]] for i in range(2 * r + 1))
    return sum(k[i] * rows[i : i + image.shape[0], :] for i in range(2 * r + 1))


def _mad_std(x: np.ndarray) -> float:
    x = np.asarray(x, np.float64).ravel()
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


def _noise_of_mean(frames: np.ndarray, mean: np.ndarray) -> float:
    n = frames.shape[0]
    if n >= 2:
        return _mad_std(np.diff(frames[: min(n, 8)], axis=0)) / np.sqrt(2.0 * n)
    # one image: its residual from the 3 x 3 mean is (8/9)-scaled white noise of variance (1 + 1/8)...
    local = sum(np.roll(np.roll(mean, dy, 0), dx, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9.0
    return _mad_std((mean - local)[1:-1, 1:-1]) / np.sqrt(8.0 / 9.0)


def _width(mean: np.ndarray, rows: np.ndarray, cols: np.ndarray, background: float) -> float:
    """Gaussian sigma (px) of the averaged peak, from the fall-off at radii 1, sqrt 2 and 2."""
    h, w = mean.shape
    ok = (rows >= 3) & (rows < h - 3) & (cols >= 3) & (cols < w - 3)
    rows, cols = rows[ok], cols[ok]
    if rows.size == 0:
        return float("nan")
    k = np.arange(-3, 4)
    patch = mean[rows[:, None, None] + k[None, :, None], cols[:, None, None] + k[None, None, :]].mean(axis=0)
    # the local floor (the lower quarter of the patch's rim), not the frame's: columns of a
    # particle sit on its thickness, and neighbours in a lattice fill the valleys in between
    rim = np.concatenate([patch[0], patch[-1], patch[1:-1, 0], patch[1:-1, -1]])
    patch = patch - max(background, float(np.percentile(rim, 25)))
    c = patch[3, 3]
    ring = {1.0: [(2, 3), (4, 3), (3, 2), (3, 4)], 2.0: [(2, 2), (2, 4), (4, 2), (4, 4)], 4.0: [(1, 3), (5, 3), (3, 1), (3, 5)]}
    r2, logs = [], []
    for rr, idx in ring.items():
        v = float(np.mean([patch[i] for i in idx]))
        if c > 0 and v > 0:
            r2.append(rr)
            logs.append(np.log(v / c))
    if not r2:
        return float("nan")
    r2a, la = np.asarray(r2), np.asarray(logs)
    slope = float((r2a @ la) / (r2a @ r2a))  # log ratio = -r^2 / (2 sigma^2), through the origin
    if slope >= 0:
        return float("nan")
    var = -1.0 / (2.0 * slope) - 1.0 / 12.0
    return float(np.sqrt(max(var, 0.05)))


def _spectrum_peaks(image: np.ndarray, max_period: float, count: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """The strongest power-spectrum peaks of ``image``: (k vectors [kx, ky] in cycles/px, ratio to their shell)."""
    h, w = image.shape
    win = np.hanning(h)[:, None] * np.hanning(w)[None, :]
    power = np.abs(np.fft.fft2((image - image.mean()) * win)) ** 2
    ky = np.fft.fftfreq(h)[:, None] * np.ones((1, w))
    kx = np.ones((h, 1)) * np.fft.fftfreq(w)[None, :]
    kr = np.hypot(kx, ky)
    band = (kr > max(4.0 / min(h, w), 1.0 / max_period)) & (kr < 1 / 2.5)
    # the median power at each radius (1-bin shells): a peak is measured against its own shell,
    # which takes out the atoms' form factor and the noise spectrum
    shell = np.rint(kr * min(h, w)).astype(int)
    med = np.zeros(shell.max() + 1)
    for s in np.unique(shell[band]):
        med[s] = np.median(power[shell == s])
    ratio = np.where(band, power / np.maximum(med[shell], 1e-30), 0.0)
    fs = np.fft.fftshift(ratio)
    mask = local_maxima(fs, 1) & (fs > 0)
    ys, xs = np.nonzero(mask)
    order = np.argsort(-fs[ys, xs])[: 2 * count]
    ys, xs = ys[order], xs[order]
    vec = np.stack([np.fft.fftshift(kx)[ys, xs], np.fft.fftshift(ky)[ys, xs]], axis=1)
    # sub-bin refinement: centroid of the 3 x 3 power around each peak
    pw = np.fft.fftshift(power)
    refined = []
    for y, x, v in zip(ys, xs, vec):
        y0, y1, x0, x1 = max(y - 1, 0), min(y + 2, h), max(x - 1, 0), min(x + 2, w)
        p = pw[y0:y1, x0:x1]
        gy, gx = np.mgrid[y0:y1, x0:x1]
        dy = float((p * (gy - y)).sum() / p.sum()) / h
        dx = float((p * (gx - x)).sum() / p.sum()) / w
        refined.append(v + np.array([dx, dy]))
    vec = np.asarray(refined).reshape(-1, 2)
    keep = (vec[:, 1] > 1e-9) | ((np.abs(vec[:, 1]) <= 1e-9) & (vec[:, 0] > 0))  # one of each +-k pair
    return vec[keep][:count], fs[ys, xs][keep][:count]


def _basis(vec: np.ndarray, ratio: np.ndarray) -> np.ndarray | None:
    """The real-space basis (rows ``[x, y]``, px) from the power-spectrum peaks ``vec`` (cycles/px).

    Among the strong peaks (a quarter of the lattice threshold), the lowest-order one and the
    lowest-order one at least 20 degrees off it: the strongest may be second-order reflections
    (MoS2's {110}), whose lattice is finer than the crystal's; Gauss-reduced to the shortest pair,
    their reciprocal is the cell (several sites of a motif fold into it, :func:`_motif`).
    """
    strong = vec[ratio >= LATTICE_RATIO / 4]
    strong = strong[np.argsort(np.hypot(*strong.T))]
    if strong.shape[0] < 2:
        return None
    k1 = strong[0]
    k2 = next((u for u in strong[1:] if abs(k1[0] * u[1] - k1[1] * u[0]) > np.sin(np.deg2rad(20)) * np.hypot(*k1) * np.hypot(*u)), None)
    if k2 is None:
        return None
    for _ in range(10):  # Gauss reduction: the shortest pair spanning the same lattice
        if np.hypot(*k2) < np.hypot(*k1):
            k1, k2 = k2, k1
        m = np.rint(k1 @ k2 / (k1 @ k1))
        if m == 0:
            break
        k2 = k2 - m * k1
    return np.linalg.inv(np.stack([k1, k2])).T  # rows a1, a2: a_i . k_j = delta_ij


def _refine(positions: np.ndarray, basis: np.ndarray, rounds: int = 2) -> np.ndarray:
    """The basis refined by least squares on the peaks themselves.

    The spectrum's bins give the cell to about 1 %, which shifts a site by half a cell across a
    field 50 cells wide and smears the folded motif. Pairs of peaks up to 3 cells apart whose
    separation is a whole number of cells (to 0.2) pin the basis: separation = n @ basis.
    """
    anchors = positions[:: max(1, len(positions) // 300)]  # ~300 x all pairs: a few ms, plenty of pairs
    d = (positions[None, :, :] - anchors[:, None, :]).reshape(-1, 2)
    reach = 3.2 * float(np.hypot(*basis).max())
    d = d[(np.hypot(*d.T) > 0.5) & (np.hypot(*d.T) < reach)]
    for _ in range(rounds):
        f = d @ np.linalg.inv(basis)
        n = np.rint(f)
        good = np.all(np.abs(f - n) < 0.2, axis=1) & np.any(n != 0, axis=1)
        if good.sum() < 20:
            break
        basis = np.linalg.lstsq(n[good], d[good], rcond=None)[0]
    return basis


def _motif(positions: np.ndarray, heights: np.ndarray, basis: np.ndarray) -> tuple[tuple[float, float, float], ...]:
    """Sites of one lattice cell: modes of the peaks' fractional coordinates (folded into [0, 1)^2)."""
    frac = (positions @ np.linalg.inv(basis)) % 1.0  # positions = frac @ basis
    bins = 12
    hist, _, _ = np.histogram2d(frac[:, 0], frac[:, 1], bins=bins, range=[[0, 1], [0, 1]])
    smooth = sum(np.roll(np.roll(hist, dy, 0), dx, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    tiled = np.tile(smooth, (3, 3))
    peaks = local_maxima(tiled, 1)[bins : 2 * bins, bins : 2 * bins] & (smooth >= 0.12 * smooth.max())
    sites = (np.argwhere(peaks) + 0.5) / bins
    if sites.size == 0:
        return ()
    # assign each peak to its nearest site on the torus (in px), refine by the circular mean
    d = frac[:, None, :] - sites[None, :, :]
    d -= np.rint(d)
    dist = np.linalg.norm(d @ basis, axis=2)
    nearest = dist.argmin(axis=1)
    out = []
    top = float(np.percentile(heights, 95)) or 1.0
    counts = np.bincount(nearest, minlength=sites.shape[0])
    for s in range(sites.shape[0]):
        members = nearest == s
        # a site of the crystal is filled in most cells; a mode that holds far fewer peaks than
        # the fullest site is noise, or peaks off the lattice (adatoms, a second grain)
        if members.sum() < max(3, 0.1 * counts.max()):
            continue
        ang = 2 * np.pi * frac[members]
        centre = (np.arctan2(np.sin(ang).mean(0), np.cos(ang).mean(0)) / (2 * np.pi)) % 1.0
        out.append((float(centre[0]), float(centre[1]), float(np.median(heights[members]) / top)))
    return tuple(out)


def _peaks(mean: np.ndarray, noise: float, smooth_px: float, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """Peaks of ``mean`` smoothed by ``smooth_px``: rows, cols, the smoothed image, background, noise of it."""
    smooth = _gauss_smooth(mean, smooth_px)
    noise_s = max(noise / (2 * np.sqrt(np.pi) * smooth_px), 1e-12)  # white noise through a unit-sum Gaussian
    background = float(np.percentile(smooth, 25))
    mask = local_maxima(smooth, radius)
    b = max(_BORDER, radius)
    mask[:b], mask[-b:], mask[:, :b], mask[:, -b:] = False, False, False, False
    rows, cols = np.nonzero(mask & (smooth - background > PEAK_Z * noise_s))
    return rows, cols, smooth, background, noise_s


def _estimate(frames: np.ndarray, pixel_size_nm: float | None) -> SampleContent:
    n, h, w = frames.shape
    mean = frames.mean(axis=0, dtype=np.float64)
    noise = _noise_of_mean(frames, mean)
    # 3 x 3 maxima: columns of a 2-D material sit 4-5 px apart, and a bright column's tail
    # outshines a dim neighbour inside a 5 x 5 window; wide peaks are found again at their width
    rows, cols, smooth, background, noise_s = _peaks(mean, noise, _SMOOTH, 1)
    width = _width(mean, rows, cols, background) if rows.size else float("nan")
    if np.isfinite(width) and width > 2.0:
        rows, cols, smooth, background, noise_s = _peaks(mean, noise, 0.7 * width, max(1, round(width / 1.5)))
        width = _width(mean, rows, cols, background) if rows.size else float("nan")
    heights = mean[rows, cols] - background
    area = (h - 2 * _BORDER) * (w - 2 * _BORDER)
    count = int(rows.size)
    density = count / area
    snr = float(np.median(smooth[rows, cols] - background) / noise_s) if count else 0.0
    peak = float(np.median(heights)) if count else 0.0
    bright = ()
    if count:
        top = float(np.percentile(heights, 95)) or 1.0
        bright = tuple(float(v) for v in np.clip(np.percentile(heights, np.arange(10, 100, 10)) / top, 0, 4))

    # an atomic lattice's first-order period is below 6 A (16 px where the pixel size is unknown):
    # longer periods are a particle's outline or the support's texture
    max_period = 0.6 / pixel_size_nm if pixel_size_nm else 16.0
    vec, ratio = _spectrum_peaks(mean - background, max_period)
    lattice_ratio = float(ratio[0]) if ratio.size else 0.0
    lattice = bool(lattice_ratio >= LATTICE_RATIO and count >= MIN_PEAKS)
    spacing, basis, motif = None, (), ()
    if lattice:
        spacing = float(1.0 / np.hypot(*vec[0]))
        real = _basis(vec, ratio)
        if real is not None:
            real = _refine(np.stack([cols, rows], axis=1).astype(np.float64), real)
            basis = tuple((float(v[0]), float(v[1])) for v in real)
            spacing = float(min(np.hypot(*real[0]), np.hypot(*real[1])))  # the cell's shortest side
            motif = _motif(np.stack([cols, rows], axis=1).astype(np.float64), heights, real)
    reliable, note = True, ""
    if count < MIN_PEAKS:
        reliable, note = False, f"only {count} peaks found"
    elif snr < MIN_SNR:
        reliable, note = False, f"peaks only {snr:.1f} noise deviations high"
    elif not np.isfinite(width):
        reliable, note = False, "peak width not measurable"
    return SampleContent(
        density_px=float(density),
        density_nm2=float(density / pixel_size_nm**2) if pixel_size_nm else None,
        width_px=float(width) if np.isfinite(width) else 0.0,
        peak_counts=peak,
        background_counts=background,
        lattice=lattice,
        spacing_px=spacing,
        frames=n,
        reliable=reliable,
        note=note,
        peaks=count,
        snr=snr,
        brightness=bright,
        basis=basis,
        motif=motif,
        lattice_ratio=lattice_ratio,
    )


def estimate_content(
    frames: np.ndarray, pixel_size_nm: float | None = None, window: int = 32, windows: int = 3
) -> SampleContent:
    """Estimate what the clean images of raw ``(T, H, W)`` frames (or one ``(H, W)`` image) hold.

    Up to ``windows`` windows of ``window`` consecutive frames, spread over the movie, are
    estimated each; numbers are their medians, ``lattice`` their majority. Frames smaller than
    16 px or constant give an unreliable estimate, not an error.
    """
    f = np.asarray(frames)
    if f.ndim == 2:
        f = f[None]
    if f.ndim != 3:
        raise ValueError(f"need (T, H, W) frames or one (H, W) image, got shape {f.shape}")
    t, h, w = f.shape
    if t == 0 or min(h, w) < 16 or not np.isfinite(f).all() or float(np.ptp(f)) == 0.0:
        return SampleContent(0.0, None, 0.0, 0.0, 0.0, False, None, int(t), False, "frames too small, empty or constant")
    size = min(window, t)
    starts = np.unique(np.linspace(0, t - size, max(1, min(windows, t // size))).round().astype(int))
    parts = [_estimate(np.asarray(f[s : s + size], np.float32), pixel_size_nm) for s in starts]
    if len(parts) == 1:
        return parts[0]
    lattice = sum(p.lattice for p in parts) * 2 > len(parts)
    best = max((p for p in parts if p.lattice == lattice), key=lambda p: p.snr)

    def med(name: str) -> float:
        return float(np.median([getattr(p, name) for p in parts]))

    density = med("density_px")
    return SampleContent(
        density_px=density,
        density_nm2=density / pixel_size_nm**2 if pixel_size_nm else None,
        width_px=med("width_px"),
        peak_counts=med("peak_counts"),
        background_counts=med("background_counts"),
        lattice=lattice,
        spacing_px=best.spacing_px,
        frames=int(size * len(parts)),
        reliable=all(p.reliable for p in parts),
        note="; ".join(sorted({p.note for p in parts if p.note})),
        peaks=int(np.median([p.peaks for p in parts])),
        snr=med("snr"),
        brightness=best.brightness,
        basis=best.basis,
        motif=best.motif,
        lattice_ratio=med("lattice_ratio"),
    )
