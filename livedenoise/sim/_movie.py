"""Simulated low-dose HAADF-STEM movies of heavy atoms on a light support, with ground truth.

The project makes its own test data here (nothing is downloaded): ``replay --synthetic`` streams
it, the tests and the default model's training use it, and ``livedenoise simulate movie`` writes
it to TIFF with its truth and atom positions. numpy only (the daemon imports it).

The defaults mirror the physics-simulated development movie ``dev-D`` (abTEM multislice, Pt atoms
on 4 nm amorphous carbon, 0.4 A/px, 300 e-/px); ``docs/simulation.md`` gives the full model and
the measured comparison. In short, per frame:

* **truth** (fraction of the beam) = static carbon-like background (optionally with a thickness
  gradient) + the sum of one atom profile per Pt atom (a Gaussian core, FWHM 2.06 px, plus a weak
  wide tail fitted to abTEM's response; peak 8.3e-3 of the beam) at the exact sub-pixel positions;
* **scene**: single atoms jittering around their sites (Ornstein-Uhlenbeck) that hop by 3-6 px
  now and then, and compact close-packed clusters (rafts, with second-layer atoms in hollow
  sites for the larger ones) that rotate slowly and jitter;
* **noise**: expected counts = dose x truth + pedestal; occasional +-1 px scan-line shifts of
  those expected counts (not in the truth or the positions); Poisson counting; Gaussian read
  noise per pixel; a Gaussian offset per scan line (row): :func:`~._noise.acquire`, shared by
  every simulator.

A 48-frame 128 x 128 movie takes about 0.15 s, 48 frames of 512 x 512 about 2 s.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ._noise import NoiseConfig, acquire

__all__ = ["Movie", "SimConfig", "as_dtype", "movie_metadata", "render_atoms", "simulate_movie", "stream_frames"]

_REF_AREA = 128 * 128  # atom counts in SimConfig are per 128 x 128 pixels


@dataclass(frozen=True, slots=True)
class SimConfig:
    """A simulated acquisition; lengths in pixels (0.4 A each), intensities in fraction of the beam.

    ``dose`` is incident electrons per pixel per frame. Atom counts (``n_single``, ``clusters``)
    are per 128 x 128 pixels and scale with the frame's area (a 512 x 512 field holds 16 times
    as many, a 64 x 64 one a quarter).
    """

    size: int = 128
    frames: int = 48
    dose: float = 300.0
    n_single: int = 10  # single atoms per 128^2 pixels
    atom_sigma: float = 0.875  # px, Gaussian core of the atom profile (FWHM 2.06 px)
    atom_peak: float = 8.3e-3  # beam fraction at a single atom's peak (core + tail)
    background: float = 2.4e-4  # carbon support, mean beam fraction
    gradient: float = 0.0  # relative increase of background thickness left -> right (1 = doubles)
    pedestal: float = 0.5  # dark / stray counts per pixel
    jitter: float = 0.35  # px per frame per axis, Ornstein-Uhlenbeck noise of single atoms
    seed: int = 0
    # --- added with the evaluation work (defaults from dev-D's README and measurements)
    clusters: tuple[int, ...] = (5, 12)  # cluster sizes per 128^2 pixels
    atom_tail: float = 0.048  # fraction of the peak in a wide component (abTEM's tails)
    atom_tail_sigma: float = 1.7  # px
    pull: float = 0.25  # per frame, pull-back of single atoms to their sites
    hop_prob: float = 0.02  # per single atom per frame
    hop_min: float = 3.0  # px
    hop_max: float = 6.0  # px
    nn_distance: float = 6.9  # px, nearest-neighbour distance in clusters (2.77 A)
    layer_every: int = 6  # clusters of >= 10 atoms get n // layer_every second-layer atoms
    rotation_min: float = 0.3  # degrees per frame, rigid cluster rotation
    rotation_max: float = 0.8
    cluster_jitter: float = 0.2  # px per frame, OU noise of a cluster's centre
    cluster_pull: float = 0.2
    thermal: float = 0.1  # px, independent jitter of each cluster atom per frame
    carbon_texture: float = 0.3  # relative standard deviation of the carbon image
    carbon_corr: float = 0.78  # px, Gaussian correlation width of the carbon texture
    read_noise: float = 0.25  # counts, Gaussian, per pixel
    line_noise: float = 0.15  # counts, Gaussian offset per scan line (row)
    line_shift: float = 0.02  # probability per row of a +-1 px shift along x
    margin: float = 11.0  # px kept free of atoms at the frame's edges

    def noise(self) -> NoiseConfig:
        """The detector part of this acquisition."""
        return NoiseConfig(self.dose, self.pedestal, self.read_noise, self.line_noise, self.line_shift)


@dataclass(frozen=True, slots=True)
class Movie:
    noisy: np.ndarray  # (T, H, W) float32 counts (may be negative: read noise)
    truth: np.ndarray  # (T, H, W) float32 beam fraction
    positions: np.ndarray  # (T, K, 2) float32, [x, y] = [column, row] in pixels, same order each frame
    groups: np.ndarray | None = None  # (K,) int: -1 single atom, k >= 0 member of cluster k

    def noisy_as(self, dtype: str | np.dtype) -> np.ndarray:
        """The noisy counts in ``dtype``: integer types get rounded, clipped counts (read noise can
        make a pixel negative, which a plain ``astype("<u2")`` would wrap to 65535)."""
        return as_dtype(self.noisy, dtype)


# ---------------------------------------------------------------------------- rendering


def render_atoms(
    positions: np.ndarray,
    size: int | tuple[int, int],
    sigma: float = 0.875,
    peak: float | np.ndarray = 8.3e-3,
    tail: float = 0.0,
    tail_sigma: float = 1.7,
) -> np.ndarray:
    """Sum of atom profiles at sub-pixel ``[x, y]`` positions, sampled at the pixel centres.

    Profile: ``peak * ((1 - tail) G(r; sigma) + tail G(r; tail_sigma))`` with unit-height
    Gaussians G, cut off at 5 x the wider width. Work is K x patch, independent of the frame size.
    ``peak`` is one value for all atoms, or one per atom (atomic columns of different weight).
    """
    h, w = (size, size) if isinstance(size, int) else size
    out = np.zeros(h * w, np.float64)
    pos = np.asarray(positions, np.float64).reshape(-1, 2)
    if pos.shape[0] == 0:
        return out.reshape(h, w).astype(np.float32)
    amp = np.asarray(peak, np.float64).reshape(-1, 1, 1)
    if amp.shape[0] not in (1, pos.shape[0]):
        raise ValueError(f"peak must be one value or one per atom ({pos.shape[0]}), got {amp.shape[0]}")
    cut = math.ceil(5 * max(sigma, tail_sigma if tail > 0 else 0.0))
    offs = np.arange(-cut, cut + 1)
    cx = np.rint(pos[:, 0]).astype(np.int64)
    cy = np.rint(pos[:, 1]).astype(np.int64)
    gx_pix = cx[:, None] + offs[None, :]  # (K, P)
    gy_pix = cy[:, None] + offs[None, :]
    dx = gx_pix - pos[:, 0:1]
    dy = gy_pix - pos[:, 1:2]
    patch = (amp * (1 - tail)) * np.einsum(
        "ki,kj->kij", np.exp(-(dy**2) / (2 * sigma**2)), np.exp(-(dx**2) / (2 * sigma**2))
    )
    if tail > 0:
        patch += (amp * tail) * np.einsum(
            "ki,kj->kij", np.exp(-(dy**2) / (2 * tail_sigma**2)), np.exp(-(dx**2) / (2 * tail_sigma**2))
        )
    rows = np.broadcast_to(gy_pix[:, :, None], patch.shape)
    cols = np.broadcast_to(gx_pix[:, None, :], patch.shape)
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    flat = rows[inside] * w + cols[inside]
    out += np.bincount(flat, weights=patch[inside], minlength=h * w)
    return out.reshape(h, w).astype(np.float32)


def _support(cfg: SimConfig, rng: np.random.Generator) -> np.ndarray:
    """Static amorphous-carbon-like background (beam fraction), with the optional thickness ramp.

    A Poisson point field (random carbon columns) blurred by a Gaussian of width
    ``carbon_corr`` (periodic, as dev-D's carbon slab), then set to mean ``background`` and
    relative standard deviation ``carbon_texture``: positive and slightly right-skewed like
    projected amorphous carbon, with its short correlation length.
    """
    n = cfg.size
    rho = 1.0 / (4 * math.pi * cfg.carbon_corr**2 * max(cfg.carbon_texture, 1e-3) ** 2)
    counts = rng.poisson(rho, (n, n)).astype(np.float64)
    freq = np.fft.fftfreq(n)
    transfer = np.exp(-2 * math.pi**2 * cfg.carbon_corr**2 * (freq[:, None] ** 2 + freq[None, :] ** 2))
    tex = np.fft.ifft2(np.fft.fft2(counts) * transfer).real
    tex = (tex - tex.mean()) / (tex.std() + 1e-12)
    carbon = cfg.background * (1.0 + cfg.carbon_texture * tex)
    ramp = 1.0 + cfg.gradient * np.linspace(0.0, 1.0, n)[None, :]
    return (carbon * ramp).clip(0).astype(np.float32)


# ---------------------------------------------------------------------------- the scene


def _scaled_counts(cfg: SimConfig) -> tuple[int, list[int]]:
    scale = cfg.size * cfg.size / _REF_AREA
    n_single = round(cfg.n_single * scale)
    whole = math.floor(scale)
    clusters = list(cfg.clusters) * whole
    extra = round((scale - whole) * len(cfg.clusters))
    clusters += list(cfg.clusters)[:extra]
    return n_single, [c for c in clusters if c > 0]


def _cluster_shape(n: int, cfg: SimConfig, rng: np.random.Generator) -> np.ndarray:
    """Compact close-packed raft of ``n`` atoms (relative to its centroid), second layer included."""
    n_top = n // cfg.layer_every if n >= 10 else 0
    n_base = n - n_top
    a = cfg.nn_distance
    k = np.arange(-6, 7)
    i, j = np.meshgrid(k, k, indexing="ij")
    lattice = np.stack([a * (i + 0.5 * j), a * (math.sqrt(3) / 2) * j], axis=-1).reshape(-1, 2)
    centre = rng.uniform(-0.5, 0.5, 2) * a * 0.5
    d = np.hypot(*(lattice - centre).T) + rng.uniform(0, 1e-3, lattice.shape[0])
    base = lattice[np.argsort(d)[:n_base]]
    atoms = [base]
    if n_top:
        # hollow sites: centroids of triangles of three mutually neighbouring base atoms
        dd = np.hypot(*(base[:, None, :] - base[None, :, :]).transpose(2, 0, 1))
        nb = (dd > 0.5 * a) & (dd < 1.1 * a)
        hollows = []
        for p in range(n_base):
            for q in range(p + 1, n_base):
                if not nb[p, q]:
                    continue
                for r in range(q + 1, n_base):
                    if nb[p, r] and nb[q, r]:
                        hollows.append(base[[p, q, r]].mean(axis=0))
        hollows = np.asarray(hollows).reshape(-1, 2)
        rng.shuffle(hollows)
        chosen: list[np.ndarray] = []
        for hpt in hollows:
            if all(np.hypot(*(hpt - c)) >= a for c in chosen):
                chosen.append(hpt)
            if len(chosen) == n_top:
                break
        if chosen:
            atoms.append(np.asarray(chosen))
    shape = np.concatenate(atoms, axis=0)
    return shape - shape.mean(axis=0)


def _free(p: np.ndarray, others: np.ndarray, min_dist: float) -> bool:
    return others.shape[0] == 0 or bool(np.min(np.hypot(*(others - p).T)) >= min_dist)


def simulate_movie(cfg: SimConfig) -> Movie:
    """A movie of jittering, hopping single atoms and slowly rotating clusters, with truth.

    Deterministic for a given ``cfg`` (``seed``). Atom order: the atoms of cluster 0, of
    cluster 1, ..., then the single atoms; the same in every frame.
    """
    if cfg.size < 16 or cfg.frames < 1:
        raise ValueError("need size >= 16 and frames >= 1")
    rng = np.random.default_rng(cfg.seed)
    n = cfg.size
    lo_edge, hi_edge = min(cfg.margin, n / 4), n - min(cfg.margin, n / 4)
    n_single, cluster_sizes = _scaled_counts(cfg)

    # place the clusters (no overlap, fully inside the margins whatever their rotation)
    shapes, centres, radii = [], [], []
    for size_c in cluster_sizes:
        shape = _cluster_shape(size_c, cfg, rng)
        rad = float(np.max(np.hypot(*shape.T))) if size_c > 1 else 0.0
        for _ in range(200):
            c = rng.uniform(lo_edge + rad, hi_edge - rad, 2) if hi_edge - lo_edge > 2 * rad else np.full(2, n / 2)
            if all(np.hypot(*(c - c2)) >= rad + r2 + cfg.nn_distance for c2, r2 in zip(centres, radii)):
                shapes.append(shape)
                centres.append(c)
                radii.append(rad)
                break
    n_clusters = len(shapes)
    theta0 = rng.uniform(0, 2 * math.pi, n_clusters)
    omega = np.deg2rad(rng.uniform(cfg.rotation_min, cfg.rotation_max, n_clusters)) * rng.choice([-1, 1], n_clusters)

    # single atoms: free sites, away from every cluster's swept disc and from each other
    min_sep = max(cfg.nn_distance, 6.0)
    sites: list[np.ndarray] = []
    for _ in range(n_single):
        for _ in range(500):
            p = rng.uniform(lo_edge, hi_edge, 2)
            ok = all(np.hypot(*(p - c)) >= r + min_sep for c, r in zip(centres, radii))
            if ok and _free(p, np.asarray(sites).reshape(-1, 2), min_sep):
                sites.append(p)
                break
    site = np.asarray(sites, np.float64).reshape(-1, 2)
    n_s = site.shape[0]

    groups = np.concatenate(
        [np.full(s.shape[0], k, np.int64) for k, s in enumerate(shapes)] + [np.full(n_s, -1, np.int64)]
    )
    k_total = groups.size
    positions = np.empty((cfg.frames, k_total, 2), np.float32)

    stat = cfg.jitter / math.sqrt(max(1 - (1 - cfg.pull) ** 2, 1e-6))
    u = rng.normal(0.0, stat, (n_s, 2))  # single atoms: OU displacement from the site
    cstat = cfg.cluster_jitter / math.sqrt(max(1 - (1 - cfg.cluster_pull) ** 2, 1e-6))
    cu = rng.normal(0.0, cstat, (n_clusters, 2))
    centres_a = np.asarray(centres, np.float64).reshape(-1, 2)
    for t in range(cfg.frames):
        if t > 0:
            u = (1 - cfg.pull) * u + rng.normal(0.0, cfg.jitter, u.shape)
            cu = (1 - cfg.cluster_pull) * cu + rng.normal(0.0, cfg.cluster_jitter, cu.shape)
        cl = []
        for k in range(n_clusters):
            a = theta0[k] + omega[k] * t
            rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
            pts = shapes[k] @ rot.T + centres_a[k] + cu[k]
            pts = pts + rng.normal(0.0, cfg.thermal, pts.shape)
            cl.append(pts)
        cluster_xy = np.concatenate(cl, axis=0) if cl else np.zeros((0, 2))
        if t > 0 and n_s:
            for i in np.flatnonzero(rng.random(n_s) < cfg.hop_prob):
                for _ in range(20):
                    ang = rng.uniform(0, 2 * math.pi)
                    dist = rng.uniform(cfg.hop_min, cfg.hop_max)
                    new = site[i] + dist * np.array([math.cos(ang), math.sin(ang)])
                    if not (lo_edge <= new[0] <= hi_edge and lo_edge <= new[1] <= hi_edge):
                        continue
                    others = np.concatenate([np.delete(site + u, i, axis=0), cluster_xy])
                    away = all(np.hypot(*(new - c)) >= r + cfg.nn_distance / 2 for c, r in zip(centres_a, radii))
                    if away and _free(new + u[i], others, 4.0):
                        site[i] = new
                        break
        positions[t] = np.concatenate([cluster_xy, site + u], axis=0)

    support = _support(cfg, rng)
    truth = np.empty((cfg.frames, n, n), np.float32)
    for t in range(cfg.frames):
        truth[t] = support + render_atoms(
            positions[t], n, cfg.atom_sigma, cfg.atom_peak, cfg.atom_tail, cfg.atom_tail_sigma
        )
    noisy = acquire(truth, cfg.noise(), rng)
    return Movie(noisy, truth, positions, groups)


# ---------------------------------------------------------------------------- outputs


def movie_metadata(movie: Movie, cfg: SimConfig, name: str = "simulated") -> dict[str, Any]:
    """The positions JSON of ``simulate movie`` (the schema of dev-D's ``D_positions.json``)."""
    groups = movie.groups if movie.groups is not None else np.full(movie.positions.shape[1], -1)
    return {
        "movie": name,
        "units": "pixels; x = column, y = row; pixel (i,j) centre = probe position (j,i)*0.4 A",
        "pixel_size_A": 0.4,
        "dose_e_per_px": cfg.dose,
        "group_id": [int(g) for g in groups],
        "group_note": "-1 = single atom, k>=0 = cluster k",
        "frames": np.round(movie.positions.astype(np.float64), 3).tolist(),
        "simulator": "livedenoise.sim",
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
    }


def as_dtype(counts: np.ndarray, dtype: str | np.dtype) -> np.ndarray:
    """Counts in ``dtype``: rounded and clipped to the range of an integer dtype, else cast."""
    dt = np.dtype(dtype)
    if dt.kind in "ui":
        info = np.iinfo(dt)
        return np.clip(np.rint(counts), info.min, info.max).astype(dt)
    return np.asarray(counts).astype(dt)


def stream_frames(cfg: SimConfig, dtype: str = "<u2") -> Iterator[np.ndarray]:
    """Endless noisy frames for ``replay --synthetic``: the movie, played forwards and back.

    Integer dtypes get counts rounded and clipped to the dtype's range (read noise can make a
    pixel negative); float dtypes get the counts as simulated.
    """
    frames = simulate_movie(cfg).noisy_as(dtype)
    order = list(range(len(frames))) + list(range(len(frames) - 2, 0, -1))
    while True:
        for i in order:
            yield frames[i]
