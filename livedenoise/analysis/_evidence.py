"""Evidence per atom: how strongly the *raw* counts support each atom found on a denoised frame.

A denoiser can turn a cluster of bright noise pixels into a convincing atom (the Noise2Atom
paper's Fig. 4 failure); CSS says how stable the output is, not whether it is true. So each atom
found on the denoised frame is checked against the raw frame it came from, with the counting
statistics of the detector. numpy only (the daemon imports it), vectorised over the atoms of a
frame: about 0.1 ms for 30 atoms.

The test, per atom at ``[x, y]`` (``sigma`` = the atom's Gaussian width, px):

1. **Pixels**: the *signal disk* (pixels within ``radius`` + 0.5 px of the atom's nearest
   pixel; ``radius`` = 2.5 sigma by default) and the *background ring* (from ``radius`` + 1.5 to
   ``radius`` + 3.5 px). Pixels outside the frame are left out.
2. **Local background** ``b``: the mean count of the ring pixels that are not in the signal disk
   of any other atom of the frame (so a cluster's neighbours do not raise it); when fewer than 8
   are left, the mean of every pixel of the frame outside all the disks. Floored at
   ``min_background`` (the test needs b > 0: a frame whose dark level was subtracted is not in
   counts any more).
3. **Two hypotheses** for the disk counts ``c_i``: background only, ``c_i ~ Poisson(b)``, against
   an atom of the expected profile, ``c_i ~ Poisson(b + A g_i)`` with ``g_i`` the unit-height
   Gaussian of width sigma centred on ``[x, y]`` at the pixel centre, and the amplitude A (counts
   at the peak above background) fitted by maximum likelihood (a few Fisher-scoring steps from
   the least-squares value; A may be negative, down to where b + A g would reach 0).
4. **Log-likelihood ratio** ``llr = sum_i c_i ln(1 + A g_i / b) - A sum_i g_i`` (>= 0 at the
   fitted A) and the **signed root** ``z = sign(A) sqrt(2 llr)``: about N(0, 1) for an atom
   that is not there (Wilks), and growing with the square root of the dose for one that is. z is
   the figure to threshold and to rank atoms by; llr adds up over frames (:class:`TrackEvidence`).

Gaussian read noise of std ``s`` (counts) is handled by the shifted-Poisson approximation: ``s^2``
is added to the counts and to b, which matches the variance of Poisson(lambda) + N(0, s^2).

Positions are ``[x, y] = [column, row]`` in pixels, as :func:`~livedenoise.analysis.find_atoms`
gives them. The raw frame must be in detector counts (``gain`` converts other units).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> yy, xx = np.mgrid[:32, :32]
>>> lam = 0.6 + 8.0 * np.exp(-((xx - 10.2) ** 2 + (yy - 12.7) ** 2) / (2 * 0.875**2))
>>> raw = rng.poisson(lam).astype(np.float32)
>>> ev = atom_evidence(raw, np.array([[10.2, 12.7], [24.0, 22.0]]))
>>> bool(ev.z[0] > 5), bool(abs(ev.z[1]) < 3)
(True, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["ATOM_SIGMA", "WEAK_Z", "Evidence", "TrackEvidence", "accumulate_evidence", "atom_evidence", "estimate_sigma"]

ATOM_SIGMA = 0.875  # px: the Gaussian core of a Pt atom at 0.4 A/px (FWHM 2.06 px), docs/simulation.md
WEAK_Z = 3.0  # an atom whose (accumulated) z is below this is weakly supported by the raw counts
_MIN_RING = 8  # ring pixels needed for a local background
DECAY = 0.7  # per frame, of the evidence accumulated along a track (TrackEvidence)


@dataclass(frozen=True, slots=True)
class Evidence:
    """The raw counts' support for each atom of one frame (arrays of length K, in input order)."""

    llr: np.ndarray  # (K,) float32, log-likelihood ratio atom vs background only (nats, >= 0)
    z: np.ndarray  # (K,) float32, sign(amplitude) * sqrt(2 llr): the figure to threshold
    amplitude: np.ndarray  # (K,) float32, fitted peak counts above the local background
    background: np.ndarray  # (K,) float32, local background, counts per pixel

    def __len__(self) -> int:
        return int(self.z.shape[0])

    def weak(self, threshold: float = WEAK_Z) -> np.ndarray:
        """Boolean mask of the atoms whose z is below ``threshold`` (NaN counts as weak)."""
        return ~(self.z >= threshold)


@lru_cache(maxsize=32)
def _geometry(radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Integer (dy, dx) offsets of the signal disk and of the background ring around a pixel."""
    reach = math.ceil(radius + 3.5)
    oy, ox = np.mgrid[-reach : reach + 1, -reach : reach + 1]
    d = np.hypot(oy, ox).ravel()
    oy, ox = oy.ravel(), ox.ravel()
    disk = d <= radius + 0.5
    ring = (d >= radius + 1.5) & (d <= radius + 3.5)
    return oy[disk], ox[disk], oy[ring], ox[ring]


def _empty() -> Evidence:
    e = np.zeros(0, np.float32)
    return Evidence(e, e, e, e)


def atom_evidence(
    raw: np.ndarray,
    positions: np.ndarray,
    sigma: float = ATOM_SIGMA,
    *,
    radius: float | None = None,
    gain: float = 1.0,
    read_noise: float = 0.0,
    min_background: float = 0.05,
    iterations: int = 4,
) -> Evidence:
    """Evidence of every atom at ``positions`` (K, 2) in the raw frame ``raw`` (counts / ``gain``).

    See the module docstring for the test. ``radius``: the signal disk's radius in px (None:
    max(1.5, 2.5 sigma)). An atom whose position is not finite or whose disk lies wholly outside
    the frame gets NaN.
    """
    frame = np.asarray(raw)
    if frame.ndim != 2:
        raise ValueError(f"need one 2-D raw frame, got shape {frame.shape}")
    pos = np.asarray(positions, np.float64).reshape(-1, 2)
    if not sigma > 0 or not gain > 0 or read_noise < 0:
        raise ValueError(f"need sigma > 0, gain > 0 and read_noise >= 0, got {sigma}, {gain}, {read_noise}")
    k = pos.shape[0]
    if k == 0:
        return _empty()
    h, w = frame.shape
    rad = max(1.5, 2.5 * float(sigma)) if radius is None else float(radius)
    dys, dxs, dyr, dxr = _geometry(round(rad, 3))

    ok = np.isfinite(pos).all(axis=1)
    x = np.where(ok, pos[:, 0], -1e6)
    y = np.where(ok, pos[:, 1], -1e6)
    cx = np.rint(np.clip(x, -1e6, 1e6)).astype(np.int64)
    cy = np.rint(np.clip(y, -1e6, 1e6)).astype(np.int64)

    # the signal disks: counts, the profile, what is inside the frame
    rs = cy[:, None] + dys[None, :]
    cs = cx[:, None] + dxs[None, :]
    ins = (rs >= 0) & (rs < h) & (cs >= 0) & (cs < w)
    flat_s = np.where(ins, rs * w + cs, 0)
    flat_frame = frame.reshape(-1)
    c = flat_frame[flat_s].astype(np.float64)
    inv2s2 = 1.0 / (2.0 * float(sigma) ** 2)
    g = np.exp(-((cs - x[:, None]) ** 2 + (rs - y[:, None]) ** 2) * inv2s2) * ins
    if gain != 1.0:
        c *= gain

    # pixels near any atom: left out of every other atom's background
    near = np.zeros(h * w, bool)
    near[flat_s[ins]] = True
    rr = cy[:, None] + dyr[None, :]
    cr = cx[:, None] + dxr[None, :]
    inr = (rr >= 0) & (rr < h) & (cr >= 0) & (cr < w)
    flat_r = np.where(inr, rr * w + cr, 0)
    use = inr & ~near[flat_r]
    ring = flat_frame[flat_r].astype(np.float64)
    n_ring = use.sum(axis=1)
    b = (ring * use).sum(axis=1) / np.maximum(n_ring, 1)
    few = n_ring < _MIN_RING
    if few.any():
        away = ~near
        fallback = float(flat_frame[away].mean()) if away.any() else float(frame.mean())
        b[few] = fallback
    if gain != 1.0:
        b *= gain
    b = np.maximum(b, min_background)

    # shifted Poisson for the read noise; the amplitude by Fisher scoring
    s2 = float(read_noise) ** 2
    cp = c + s2
    bp = b + s2
    sg = g.sum(axis=1)
    sg2 = (g * g).sum(axis=1)
    valid = ok & (sg2 > 0)
    sg2s = np.where(valid, sg2, 1.0)
    a = (g * (c - b[:, None])).sum(axis=1) / sg2s
    gmax = np.where(valid, g.max(axis=1), 1.0)
    a_min = -0.95 * bp / gmax
    a = np.maximum(a, a_min)
    for _ in range(int(iterations)):
        lam = bp[:, None] + a[:, None] * g
        score = (g * (cp / lam - 1.0)).sum(axis=1)
        info = (g * g / lam).sum(axis=1)
        a = np.maximum(a + score / np.maximum(info, 1e-12), a_min)
    llr = (cp * np.log1p(a[:, None] * g / bp[:, None])).sum(axis=1) - a * sg
    llr = np.maximum(llr, 0.0)
    z = np.sign(a) * np.sqrt(2.0 * llr)
    nan = np.float64("nan")
    return Evidence(
        np.where(valid, llr, nan).astype(np.float32),
        np.where(valid, z, nan).astype(np.float32),
        np.where(valid, a, nan).astype(np.float32),
        np.where(valid, b, nan).astype(np.float32),
    )


def estimate_sigma(
    raws: np.ndarray | list[np.ndarray],
    positions: np.ndarray | list[np.ndarray],
    candidates: np.ndarray | None = None,
    *,
    radius: float = 3.0,
    gain: float = 1.0,
    read_noise: float = 0.0,
) -> float:
    """The atom width (px) that the raw counts support best: maximum of the summed llr.

    ``raws``: one raw frame (H, W) or several; ``positions``: their atoms, (K, 2) or a list of
    them. Only isolated atoms count (no other atom within 2 ``radius`` + 2 px: a neighbour in the
    disk would widen the estimate). Every candidate width (default 0.5 to 2.0 px in steps of
    0.05) is tried on the same pixels (a disk of ``radius``), the sum of the atoms' llr over all
    frames is the profile likelihood of the width, and a parabola through the best three gives
    the value. For a series, once: it costs about 30 evidence passes.
    """
    frames = [np.asarray(raws)] if np.asarray(raws[0]).ndim == 1 else [np.asarray(r) for r in raws]
    if isinstance(positions, np.ndarray) and positions.ndim == 2:
        plist = [positions]
    else:
        plist = [np.asarray(p, np.float64).reshape(-1, 2) for p in positions]
    if len(frames) != len(plist):
        raise ValueError(f"{len(frames)} raw frames but {len(plist)} position arrays")
    iso = []
    for p in plist:
        d = np.hypot(p[:, None, 0] - p[None, :, 0], p[:, None, 1] - p[None, :, 1])
        np.fill_diagonal(d, np.inf)
        iso.append(d.min(axis=1, initial=np.inf) > 2 * radius + 2)
    cand = np.arange(0.5, 2.0001, 0.05) if candidates is None else np.asarray(candidates, np.float64)
    total = np.zeros(cand.size)
    for i, s in enumerate(cand):
        for f, p, keep in zip(frames, plist, iso):
            ev = atom_evidence(f, p, float(s), radius=radius, gain=gain, read_noise=read_noise)
            total[i] += float(np.nansum(ev.llr[keep]))
    j = int(np.argmax(total))
    if 0 < j < cand.size - 1:
        y0, y1, y2 = total[j - 1 : j + 2]
        den = y0 - 2 * y1 + y2
        if den < 0:
            step = cand[j + 1] - cand[j]
            return float(cand[j] + step * 0.5 * (y0 - y2) / den)
    return float(cand[j])


class TrackEvidence:
    """Evidence accumulated along tracks, live: one update per frame, O(atoms) numpy.

    For each track id it keeps ``S = sum d^age z``, ``W = sum d^(2 age)`` and ``L = sum d^age llr``
    (``d`` = ``decay``, age in updates; 1 = plain sums over the track's life), and reports the
    combined ``z_acc = S / sqrt(W)`` (Stouffer's: a real atom seen n times at z each reaches
    z sqrt(n), an invented one, whose raw support does not repeat, stays near 0) and ``L``.
    Atoms without a track (id < 0) get their own frame's values. Tracks not updated for
    ``max_idle`` updates are forgotten.

    Why the default ``decay`` 0.7 (about 3 frames of memory): a track's past must not vouch for
    its present for long. After a hop, a multi-frame model keeps showing the atom at its old
    site for a frame or two; that ghost is linked to the atom's track and, with plain sums, would
    inherit its whole history (``benchmarks/tracks.py``: lowdose's AUC at dose 300 was 0.75 with
    plain sums, 0.93 with 0.7, while dose 100 lost 0.02).
    """

    def __init__(self, decay: float = DECAY, max_idle: int = 64):
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        self.decay, self.max_idle = float(decay), int(max_idle)
        self.reset()

    def reset(self) -> None:
        """Forget every track (a series restart or a new frame size: the tracker resets too)."""
        self._ids = np.zeros(0, np.int64)
        self._s = np.zeros(0)
        self._w = np.zeros(0)
        self._l = np.zeros(0)
        self._n = np.zeros(0, np.int64)
        self._seen = np.zeros(0, np.int64)
        self._tick = 0

    def __len__(self) -> int:
        return int(self._ids.size)

    def update(
        self, track_ids: np.ndarray, z: np.ndarray, llr: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Add one frame's evidence; returns ``(z_acc, llr_acc, n_obs)`` per atom, input order.

        Track ids must be unique within the frame (a tracker's are); NaN evidence is skipped.
        """
        tid = np.asarray(track_ids, np.int64).ravel()
        zz = np.asarray(z, np.float64).ravel()
        ll = np.asarray(llr, np.float64).ravel()
        if not tid.size == zz.size == ll.size:
            raise ValueError(f"track_ids, z and llr differ in length: {tid.size}, {zz.size}, {ll.size}")
        self._tick += 1
        d = self.decay
        if d != 1.0:  # age everything by one update
            self._s *= d
            self._l *= d
            self._w *= d * d
        tracked = tid >= 0
        good = np.isfinite(zz) & np.isfinite(ll)
        # new ids, kept sorted
        new = np.setdiff1d(tid[tracked], self._ids, assume_unique=False)
        if new.size:
            ids = np.concatenate([self._ids, new])
            order = np.argsort(ids, kind="stable")
            self._ids = ids[order]
            grow = np.zeros(new.size)
            self._s = np.concatenate([self._s, grow])[order]
            self._w = np.concatenate([self._w, grow])[order]
            self._l = np.concatenate([self._l, grow])[order]
            self._n = np.concatenate([self._n, np.zeros(new.size, np.int64)])[order]
            self._seen = np.concatenate([self._seen, np.full(new.size, self._tick)])[order]
        slot = np.searchsorted(self._ids, tid[tracked])
        add = good[tracked]
        s_at = slot[add]
        self._s[s_at] += zz[tracked][add]
        self._w[s_at] += 1.0
        self._l[s_at] += ll[tracked][add]
        self._n[s_at] += 1
        self._seen[slot] = self._tick

        z_acc = zz.copy()
        l_acc = ll.copy()
        n_obs = good.astype(np.int64)
        w = self._w[slot]
        with np.errstate(invalid="ignore", divide="ignore"):
            z_acc[tracked] = np.where(w > 0, self._s[slot] / np.sqrt(w), np.nan)
        l_acc[tracked] = np.where(w > 0, self._l[slot], np.nan)
        n_obs[tracked] = self._n[slot]

        stale = self._seen < self._tick - self.max_idle
        if stale.any():
            keep = ~stale
            self._ids, self._s, self._w = self._ids[keep], self._s[keep], self._w[keep]
            self._l, self._n, self._seen = self._l[keep], self._n[keep], self._seen[keep]
        return z_acc.astype(np.float32), l_acc.astype(np.float32), n_obs


def accumulate_evidence(
    track_ids: list[np.ndarray], z: list[np.ndarray], llr: list[np.ndarray], decay: float = DECAY
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Offline :class:`TrackEvidence` over a movie: per frame, the accumulated ``(z_acc, llr_acc)``.

    Causal (each frame sees its track's past and itself only): what the operator sees live.

    >>> ids = [np.array([0, 1]), np.array([0, 1])]
    >>> zs = [np.array([3.0, 1.0]), np.array([3.0, -1.0])]
    >>> z_acc, _ = accumulate_evidence(ids, zs, zs, decay=1.0)
    >>> [round(float(v), 3) for v in z_acc[1]]
    [4.243, 0.0]
    """
    acc = TrackEvidence(decay=decay)
    out_z, out_l = [], []
    for t, zz, ll in zip(track_ids, z, llr):
        za, la, _ = acc.update(t, zz, ll)
        out_z.append(za)
        out_l.append(la)
    return out_z, out_l
