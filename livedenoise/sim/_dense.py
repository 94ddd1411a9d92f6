"""Simulated low-dose HAADF-STEM movies of *dense* samples (crystal lattices), with ground truth.

The sparse simulator (:mod:`._movie`) has a few dozen atoms on carbon; real samples are often
crystals where every few pixels hold an atomic column. Dense structures must be measured, not
guessed, so this module makes them with the same atom profile and the same detector noise:

* ``kind="mos2"``: a monolayer MoS2-like 2-D material filling the field (random in-plane
  rotation), Mo and S2 columns on the two honeycomb sublattices (a = 3.16 A); S vacancies (one S
  of an S2 column missing: half its intensity; both: an empty site), Mo vacancies, Se substituted
  for S, a hole with no lattice, and a few Pt adatoms in hollow sites that jitter and hop to a
  neighbouring hollow site now and then;
* ``kind="particle"``: a faceted fcc nanoparticle (Pt/Au-like, a = 4.08 A, 3-5 nm) in a [110] or
  [100] zone-axis projection on the amorphous carbon support, column intensity from the number
  of atoms in each column, column vacancies and substitutions, slow drift and rotation, and a
  few Pt adatoms on the support that jitter and hop as the sparse simulator's single atoms.

Intensities: HAADF ~ Z^1.7 summed over a column's atoms (thin columns), in units of one Pt atom
(the sparse simulator's ``atom_peak``): Mo 0.349, S 0.068 (S2 0.136, 0.39 of Mo), Se 0.243,
Pt 1. A particle column of ``n`` host atoms has ``n ** 0.9`` (HAADF grows slightly less than
linearly with thickness). The default ``dose`` (``None``) is chosen per movie so that the
brightest pristine lattice column (Mo in ``mos2``: 1726 e-/px; the thickest column of the
particle: about 45-105 e-/px) peaks at ``peak_counts`` = 5 counts over a background of about
0.5 counts, the dose of the real MoS2 case of issue 19. numpy only; ``docs/simulation.md`` has
the full model. 120 frames of 256 x 256 take a few seconds.

``groups`` codes per column (:data:`GROUP_NOTE`): -1 mobile adatom (the evaluator's "single"
atoms), 0 pristine lattice column, 1 substituted column (holds at least one Se, or a foreign
atom in the particle), 2 partly vacant column (one S of an S2 pair missing, or a particle column
one atom short). A fully vacant site is absent from ``positions``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ._movie import Movie, SimConfig, _free, _support, render_atoms
from ._noise import acquire

__all__ = ["DENSE_KINDS", "GROUP_NOTE", "DenseConfig", "DenseMovie", "dense_metadata", "simulate_dense"]

DENSE_KINDS = ("mos2", "particle")
PIXEL_SIZE_A = 0.4
ADATOM, PRISTINE, SUBSTITUTED, PARTIAL = -1, 0, 1, 2
GROUP_NOTE = (
    "-1 = mobile adatom, 0 = pristine lattice column, 1 = substituted column (Se, or a foreign atom), "
    "2 = partly vacant column (one S of S2, or one atom of a particle column, missing); "
    "fully vacant sites are absent"
)
_REF_AREA = 256 * 256  # adatom counts in DenseConfig are per 256 x 256 pixels
_Z_MO, _Z_S, _Z_SE, _Z_PT = 42, 16, 34, 78


def z_weight(z: float) -> float:
    """HAADF intensity of one atom of atomic number ``z``, in units of one Pt atom (Z^1.7).

    >>> round(z_weight(42), 3), round(2 * z_weight(16) / z_weight(42), 2)
    (0.349, 0.39)
    """
    return (z / _Z_PT) ** 1.7


@dataclass(frozen=True, slots=True)
class DenseConfig:
    """A simulated dense sample; lengths in pixels (0.4 A each) unless named ``_A`` or ``_nm``.

    ``dose`` is incident electrons per pixel per frame; ``None`` chooses it so that the brightest
    pristine lattice column peaks at ``peak_counts`` (continuous profile, above the background).
    Fractions of defects are probabilities per site (per S atom for ``s_vacancy`` and
    ``se_substitution``, per column for the particle). ``adatoms`` is per 256 x 256 pixels.
    """

    kind: str = "mos2"  # "mos2" or "particle"
    size: int = 256
    frames: int = 48
    dose: float | None = None
    peak_counts: float = 5.0
    seed: int = 0
    # atom profile: the sparse simulator's (fitted to abTEM's Pt response), peak = one Pt atom
    atom_sigma: float = 0.875
    atom_peak: float = 8.3e-3
    atom_tail: float = 0.048
    atom_tail_sigma: float = 1.7
    # motion
    thermal: float = 0.1  # px, independent Gaussian jitter of every lattice column per frame
    adatoms: int = 6  # mobile Pt adatoms per 256^2 pixels
    adatom_jitter: float = 0.25  # px per frame per axis, Ornstein-Uhlenbeck noise around the site
    adatom_pull: float = 0.25  # per frame, pull-back to the site
    hop_prob: float = 0.02  # per adatom per frame
    hop_min: float = 3.0  # px, particle adatoms (on carbon); mos2 adatoms hop by one hollow site
    hop_max: float = 6.0
    # mos2
    mos2_a_A: float = 3.16
    mo_vacancy: float = 0.02
    s_vacancy: float = 0.04  # per S atom: one missing halves an S2 column, two empty it
    se_substitution: float = 0.03  # per S atom
    hole: float = 0.1  # fraction of the field (a rough blob) with no lattice; 0 = none
    # particle
    diameter_nm: tuple[float, float] = (3.0, 5.0)  # drawn per seed; at most 0.75 of the field
    zone: str = "random"  # "110", "100" or "random" (per seed)
    fcc_a_A: float = 4.08
    host_z: int = 78
    column_vacancy: float = 0.03  # per column: n -> n - 1
    column_substitution: float = 0.03  # per column: one atom replaced by one of substituent_z
    substituent_z: tuple[int, ...] = (28, 46, 83)  # Ni, Pd (lighter), Bi (heavier)
    thickness_exponent: float = 0.9  # column intensity ~ n ** 0.9
    drift: float = 0.02  # px per frame, particle (capped to 10 % of the field over the movie)
    rotation: float = 0.01  # degrees per frame, particle, about the beam axis
    # support and detector: the sparse simulator's noise model
    background: float | None = None  # None: 2e-5 (mos2, thin contamination), 2.4e-4 (particle, carbon)
    gradient: float = 0.0
    carbon_texture: float = 0.3
    carbon_corr: float = 0.78
    pedestal: float = 0.5
    read_noise: float = 0.25
    line_noise: float = 0.15
    line_shift: float = 0.02
    margin: float = 11.0  # px kept free of adatoms at the frame's edges


@dataclass(frozen=True, slots=True)
class DenseMovie(Movie):
    """A :class:`Movie` plus what a dense sample's scoring needs.

    ``weights``: (K,) column peak in units of ``atom_peak`` (one Pt atom); ``sites``: (K,) site
    names ("Mo", "S2", "column", "Pt"); ``dose``: the dose used (resolved when the config's is
    ``None``); ``zone``: "110" / "100" for a particle, "" for mos2.
    """

    weights: np.ndarray | None = None
    sites: tuple[str, ...] = ()
    dose: float = 0.0
    kind: str = ""
    zone: str = ""


# ---------------------------------------------------------------------------- helpers


def _rot(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def _ou_stat(jitter: float, pull: float) -> float:
    return jitter / math.sqrt(max(1 - (1 - pull) ** 2, 1e-6))


def _hole_mask(cfg: DenseConfig, rng: np.random.Generator):
    """A rough blob of area ``hole`` x field: returns ``inside(xy) -> bool array``."""
    n = cfg.size
    if cfg.hole <= 0:
        return lambda xy: np.zeros(len(xy), bool)
    r0 = math.sqrt(cfg.hole * n * n / math.pi)
    centre = rng.uniform(0.15 * n, 0.85 * n, 2)
    amp = rng.uniform(0.0, 0.12, 3)
    phase = rng.uniform(0, 2 * math.pi, 3)

    def inside(xy: np.ndarray) -> np.ndarray:
        d = np.asarray(xy, np.float64).reshape(-1, 2) - centre
        phi = np.arctan2(d[:, 1], d[:, 0])
        r = r0 * (1 + sum(amp[m] * np.cos((m + 2) * phi + phase[m]) for m in range(3)))
        return np.hypot(d[:, 0], d[:, 1]) < r

    return inside


# ---------------------------------------------------------------------------- mos2


def _mos2_scene(cfg: DenseConfig, rng: np.random.Generator):
    n, t_count = cfg.size, cfg.frames
    a = cfg.mos2_a_A / PIXEL_SIZE_A
    rot = _rot(rng.uniform(0, 2 * math.pi))
    a1 = rot @ np.array([a, 0.0])
    a2 = rot @ np.array([a / 2, a * math.sqrt(3) / 2])
    origin = np.full(2, (n - 1) / 2) + rng.uniform(0, 1, 2) @ np.stack([a1, a2])
    m = math.ceil(0.75 * n / (a * math.sqrt(3) / 2)) + 2
    i, j = np.meshgrid(np.arange(-m, m + 1), np.arange(-m, m + 1), indexing="ij")
    ij = np.stack([i.ravel(), j.ravel()], axis=1)
    cell = origin + ij @ np.stack([a1, a2])
    shift = (a1 + a2) / 3
    in_hole = _hole_mask(cfg, rng)

    def keep(xy: np.ndarray) -> np.ndarray:
        inside = np.all((xy >= -0.5) & (xy <= n - 0.5), axis=1)
        return inside & ~in_hole(xy)

    mo_xy = cell[keep(cell)]
    s_xy = (cell + shift)[keep(cell + shift)]
    w_mo, w_s, w_se = z_weight(_Z_MO), z_weight(_Z_S), z_weight(_Z_SE)

    mo_ok = rng.random(len(mo_xy)) >= cfg.mo_vacancy
    u = rng.random((len(s_xy), 2))
    vac = u < cfg.s_vacancy
    se = ~vac & (u < cfg.s_vacancy + cfg.se_substitution)
    s_weight = np.where(vac, 0.0, np.where(se, w_se, w_s)).sum(axis=1)
    s_ok = ~vac.all(axis=1)
    s_group = np.where(se.any(axis=1), SUBSTITUTED, np.where(vac.any(axis=1), PARTIAL, PRISTINE))

    rest = np.concatenate([mo_xy[mo_ok], s_xy[s_ok]])
    weights = np.concatenate([np.full(int(mo_ok.sum()), w_mo), s_weight[s_ok]])
    groups = np.concatenate([np.full(int(mo_ok.sum()), PRISTINE), s_group[s_ok]])
    sites = ["Mo"] * int(mo_ok.sum()) + ["S2"] * int(s_ok.sum())

    # adatoms: Pt in hollow sites (the hexagon centres), hopping to a neighbouring hollow site
    hol_xy = cell + 2 * shift
    lo, hi = min(cfg.margin, n / 4), n - min(cfg.margin, n / 4)
    allowed = np.all((hol_xy >= lo) & (hol_xy <= hi), axis=1) & ~in_hole(hol_xy)
    n_ad = round(cfg.adatoms * n * n / _REF_AREA)
    chosen: list[int] = []
    for k in rng.permutation(np.flatnonzero(allowed)):
        if len(chosen) == n_ad:
            break
        if _free(hol_xy[k], hol_xy[chosen].reshape(-1, 2), 2 * a):
            chosen.append(int(k))
    site_k = np.asarray(chosen, np.int64)
    steps = [(1, 0), (-1, 0), (0, 1), (0, -1), (1, -1), (-1, 1)]  # the 6 nearest hollow sites

    k_lat, k_ad = len(rest), len(site_k)
    positions = np.empty((t_count, k_lat + k_ad, 2), np.float32)
    positions[:, :k_lat] = rest + rng.normal(0.0, cfg.thermal, (t_count, k_lat, 2))
    u_ad = rng.normal(0.0, _ou_stat(cfg.adatom_jitter, cfg.adatom_pull), (k_ad, 2))
    for t in range(t_count):
        if t > 0:
            u_ad = (1 - cfg.adatom_pull) * u_ad + rng.normal(0.0, cfg.adatom_jitter, u_ad.shape)
            for q in np.flatnonzero(rng.random(k_ad) < cfg.hop_prob):
                di, dj = steps[rng.integers(6)]
                p0, q0 = ij[site_k[q]] + m + (di, dj)  # ij is the row-major (2m+1)^2 grid from -m
                dest = int(p0 * (2 * m + 1) + q0)
                inside = 0 <= p0 <= 2 * m and 0 <= q0 <= 2 * m
                others = hol_xy[np.delete(site_k, q)].reshape(-1, 2)
                if inside and allowed[dest] and _free(hol_xy[dest], others, 0.9 * a):
                    site_k[q] = dest
        positions[t, k_lat:] = hol_xy[site_k] + u_ad
    weights = np.concatenate([weights, np.full(k_ad, z_weight(_Z_PT))])
    groups = np.concatenate([groups, np.full(k_ad, ADATOM)]).astype(np.int64)
    return positions, weights, groups, tuple(sites + ["Pt"] * k_ad), w_mo, ""


# ---------------------------------------------------------------------------- particle


def _particle_columns(cfg: DenseConfig, rng: np.random.Generator, radius: float, zone: str):
    """Projected columns of a faceted fcc particle: (xy relative to the centre (C, 2), atoms per column)."""
    h = cfg.fcc_a_A / PIXEL_SIZE_A / 2  # half the cubic cell, px
    m = math.ceil(radius / h) + 2
    g = np.arange(-m, m + 1)
    i, j, k = (x.ravel() for x in np.meshgrid(g, g, g, indexing="ij"))
    even = (i + j + k) % 2 == 0
    ijk = np.stack([i[even], j[even], k[even]], axis=1)
    r = ijk * h + rng.uniform(-0.5, 0.5, 3) * h  # particle centre off the lattice
    f111, f100 = rng.uniform(0.84, 0.94), rng.uniform(0.9, 1.0)
    inside = np.hypot.reduce(r, axis=1) <= radius
    inside &= np.abs(r).sum(axis=1) <= f111 * radius * math.sqrt(3)  # {111} facets
    inside &= np.abs(r).max(axis=1) <= f100 * radius  # {100} facets
    ijk, r = ijk[inside], r[inside]
    if zone == "100":
        keys, xy = ijk[:, :2], r[:, :2]
    else:  # [110]: columns along (1, 1, 0), in-plane axes (1, -1, 0)/sqrt(2) and (0, 0, 1)
        keys = np.stack([ijk[:, 0] - ijk[:, 1], ijk[:, 2]], axis=1)
        xy = np.stack([(r[:, 0] - r[:, 1]) / math.sqrt(2), r[:, 2]], axis=1)
    _, first, counts = np.unique(keys, axis=0, return_index=True, return_counts=True)
    xy = xy[first]
    return xy - xy.mean(axis=0), counts


def _particle_scene(cfg: DenseConfig, rng: np.random.Generator):
    n, t_count = cfg.size, cfg.frames
    zone = cfg.zone if cfg.zone != "random" else ("110", "100")[int(rng.integers(2))]
    diameter = min(rng.uniform(*cfg.diameter_nm) * 10 / PIXEL_SIZE_A, 0.75 * n)
    radius = diameter / 2
    rel, n_atoms = _particle_columns(cfg, rng, radius, zone)

    # defects: one atom fewer, or one atom of a foreign element
    vac = rng.random(len(n_atoms)) < cfg.column_vacancy
    sub = rng.random(len(n_atoms)) < cfg.column_substitution
    n_left = n_atoms - vac
    sub &= n_left > 0
    sub_w = np.array([z_weight(z) / z_weight(cfg.host_z) for z in cfg.substituent_z])
    n_eff = n_left - sub + np.where(sub, sub_w[rng.integers(len(sub_w), size=len(n_atoms))], 0.0)
    ok = n_left > 0
    w_host = z_weight(cfg.host_z)
    weights = w_host * n_eff[ok] ** cfg.thickness_exponent
    groups = np.where(sub, SUBSTITUTED, np.where(vac, PARTIAL, PRISTINE))[ok]
    rel = rel[ok]
    ref_weight = w_host * float(n_atoms.max()) ** cfg.thickness_exponent

    # slow rigid motion, kept inside the field
    speed = min(cfg.drift, 0.1 * n / max(t_count - 1, 1))
    direction = rng.uniform(0, 2 * math.pi)
    v = speed * np.array([math.cos(direction), math.sin(direction)])
    c0 = np.full(2, (n - 1) / 2) + rng.uniform(-0.05, 0.05, 2) * n - v * (t_count - 1) / 2
    theta0 = rng.uniform(0, 2 * math.pi)
    omega = math.radians(cfg.rotation) * (1 if rng.random() < 0.5 else -1)
    path = c0 + np.arange(t_count)[:, None] * v  # the centre in every frame

    # adatoms on the carbon around it (the sparse simulator's single atoms)
    lo, hi = min(cfg.margin, n / 4), n - min(cfg.margin, n / 4)
    keep_out = radius + 8.0

    def clear(p: np.ndarray, gap: float) -> bool:
        return bool(np.min(np.hypot(*(path - p).T)) >= gap)

    sites_l: list[np.ndarray] = []
    for _ in range(round(cfg.adatoms * n * n / _REF_AREA)):
        for _ in range(500):
            p = rng.uniform(lo, hi, 2)
            if clear(p, keep_out) and _free(p, np.asarray(sites_l).reshape(-1, 2), 8.0):
                sites_l.append(p)
                break
    site = np.asarray(sites_l, np.float64).reshape(-1, 2)
    k_lat, k_ad = len(rel), len(site)
    positions = np.empty((t_count, k_lat + k_ad, 2), np.float32)
    u = rng.normal(0.0, _ou_stat(cfg.adatom_jitter, cfg.adatom_pull), (k_ad, 2))
    for t in range(t_count):
        positions[t, :k_lat] = rel @ _rot(theta0 + omega * t).T + path[t]
        if t > 0:
            u = (1 - cfg.adatom_pull) * u + rng.normal(0.0, cfg.adatom_jitter, u.shape)
            for q in np.flatnonzero(rng.random(k_ad) < cfg.hop_prob):
                for _ in range(20):
                    ang = rng.uniform(0, 2 * math.pi)
                    new = site[q] + rng.uniform(cfg.hop_min, cfg.hop_max) * np.array([math.cos(ang), math.sin(ang)])
                    inside = lo <= new[0] <= hi and lo <= new[1] <= hi
                    if inside and clear(new, radius + 4.0) and _free(new + u[q], np.delete(site + u, q, axis=0), 4.0):
                        site[q] = new
                        break
        positions[t, k_lat:] = site + u
    positions[:, :k_lat] += rng.normal(0.0, cfg.thermal, (t_count, k_lat, 2))
    weights = np.concatenate([weights, np.full(k_ad, z_weight(_Z_PT))])
    groups = np.concatenate([groups, np.full(k_ad, ADATOM)]).astype(np.int64)
    return positions, weights, groups, tuple(["column"] * k_lat + ["Pt"] * k_ad), ref_weight, zone


# ---------------------------------------------------------------------------- the movie


def simulate_dense(cfg: DenseConfig) -> DenseMovie:
    """A movie of a dense sample (``cfg.kind``), with its truth and every column's position.

    Deterministic for a given ``cfg`` (``seed``). Column order: the lattice columns (mos2: Mo,
    then S2), then the adatoms; the same in every frame. ``truth = support + render_atoms(
    positions, peak=weights * atom_peak)`` exactly, frame by frame; ``noisy`` follows the sparse
    simulator's noise model (Poisson, read and line noise, scan-line shifts).
    """
    if cfg.kind not in DENSE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(DENSE_KINDS)}, got {cfg.kind!r}")
    if cfg.zone not in ("110", "100", "random"):
        raise ValueError(f"zone must be '110', '100' or 'random', got {cfg.zone!r}")
    if cfg.size < 16 or cfg.frames < 1:
        raise ValueError("need size >= 16 and frames >= 1")
    rng = np.random.default_rng(cfg.seed)
    scene = _mos2_scene if cfg.kind == "mos2" else _particle_scene
    positions, weights, groups, sites, ref_weight, zone = scene(cfg, rng)
    dose = cfg.dose if cfg.dose is not None else cfg.peak_counts / (ref_weight * cfg.atom_peak)
    background = cfg.background if cfg.background is not None else (2e-5 if cfg.kind == "mos2" else 2.4e-4)
    noise_cfg = SimConfig(
        size=cfg.size, frames=cfg.frames, dose=dose, background=background, gradient=cfg.gradient,
        pedestal=cfg.pedestal, carbon_texture=cfg.carbon_texture, carbon_corr=cfg.carbon_corr,
        read_noise=cfg.read_noise, line_noise=cfg.line_noise, line_shift=cfg.line_shift, seed=cfg.seed,
    )
    support = _support(noise_cfg, rng)
    peaks = weights * cfg.atom_peak
    truth = np.empty((cfg.frames, cfg.size, cfg.size), np.float32)
    for t in range(cfg.frames):
        truth[t] = support + render_atoms(
            positions[t], cfg.size, cfg.atom_sigma, peaks, cfg.atom_tail, cfg.atom_tail_sigma
        )
    noisy = acquire(truth, noise_cfg.noise(), rng)
    return DenseMovie(noisy, truth, positions, groups, weights, sites, float(dose), cfg.kind, zone)


def dense_metadata(movie: DenseMovie, cfg: DenseConfig, name: str = "simulated") -> dict[str, Any]:
    """The positions JSON of ``simulate dense``: ``simulate movie``'s schema (``livedenoise evaluate
    --positions`` reads it) plus ``kind``, ``zone``, per-column ``weights`` and ``site``."""
    groups = movie.groups if movie.groups is not None else np.full(movie.positions.shape[1], ADATOM)
    weights = movie.weights if movie.weights is not None else np.ones(movie.positions.shape[1])
    return {
        "movie": name,
        "units": "pixels; x = column, y = row; pixel (i,j) centre = probe position (j,i)*0.4 A",
        "pixel_size_A": PIXEL_SIZE_A,
        "dose_e_per_px": movie.dose,
        "kind": movie.kind,
        "zone": movie.zone,
        "group_id": [int(g) for g in groups],
        "group_note": GROUP_NOTE,
        "weights": [round(float(w), 5) for w in weights],
        "weight_note": "column peak in units of one Pt atom's peak (atom_peak): Mo 0.349, S2 0.136, "
        "Se 0.244, Pt 1, particle column n_eff ** 0.9",
        "site": list(movie.sites),
        "frames": np.round(movie.positions.astype(np.float64), 3).tolist(),
        "simulator": "livedenoise.sim.simulate_dense",
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
    }
