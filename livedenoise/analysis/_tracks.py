"""Atom tracks and hops, live: each frame's atoms linked to the previous frames' (numpy only).

The daemon links the atoms of every frame as they come, so it needs a linker that is small and
fast (about 0.1 ms for 30 atoms) and has no dependency beyond numpy; trackpy's ``link`` is the
reference offline (``benchmarks/tracks.py`` compares the two on the same data).

The rule, per frame (:meth:`Tracker.update`):

1. **Live tracks**: those seen in one of the last ``memory`` + 1 frames (by image id: a track
   unseen for up to ``memory`` frames can still be continued; after that it ends).
2. **Candidate links**: every (atom, live track) pair closer than ``max_disp`` px, measured from
   the track's last observed position (a grid of ``max_disp`` cells finds them without the
   all-pairs matrix when there are many atoms).
3. **Greedy by distance**: the closest pair is linked first, then the closest among the atoms
   and tracks still free, and so on (computed in rounds of mutually nearest pairs, which gives the
   same links vectorised). trackpy instead minimises the summed squared displacement of each
   connected group of candidates; the two differ only where an atom has several candidates,
   which the benchmark counts.
4. Atoms left without a link start **new tracks** (ids count up from 0 and are never reused).
5. **Hops**: a link longer than ``hop_distance`` (default 2.5 px, the evaluation's hop size) is a
   :class:`HopEvent` with the track's position and image id before and after.

``max_disp`` must exceed the longest hop to follow it (single Pt atoms hop 3 to 6 px) and is best
kept below the closest spacing of atoms that might both be missed at once; greedy linking
keeps the close, ordinary links first, so a hop is only linked to what is left.

Bad input: more than ``max_atoms`` atoms in a frame (a noise frame can give thousands of
"atoms") links the first ``max_atoms`` (the finder's tallest first) and gives the rest id -1,
counted in :attr:`Tracker.truncated`; a frame size change or an image id that does not increase
(a series restart) resets the tracks before the frame is linked (counted in :attr:`Tracker.resets`);
non-finite positions get id -1.

>>> tr = Tracker(max_disp=7.0)
>>> tr.update(np.array([[10.0, 10.0], [30.0, 30.0]]), image_id=0).tolist()
[0, 1]
>>> tr.update(np.array([[30.4, 29.8], [14.5, 10.0]]), image_id=1).tolist()
[1, 0]
>>> [(h.track_id, h.image_id_before, h.image_id_after, h.after) for h in tr.hops]
[(0, 0, 1, (14.5, 10.0))]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["HopEvent", "Tracker", "link_frames"]

HOP_DISTANCE = 2.5  # px: the evaluation's hop (analysis._detection.HOP_PX)
_DENSE_PAIRS = 4096  # up to this many atom x track pairs the all-pairs matrix is cheaper than the grid


@dataclass(frozen=True, slots=True)
class HopEvent:
    """A track whose position jumped more than ``hop_distance`` between two observations."""

    track_id: int
    image_id_before: int
    image_id_after: int
    before: tuple[float, float]  # [x, y] px, the track's last observation before the hop
    after: tuple[float, float]  # [x, y] px, where it landed
    distance: float  # px


def _expand(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For ranges ``[lo_i, hi_i)``: (i repeated per element, the elements), vectorised."""
    n = hi - lo
    total = int(n.sum())
    owner = np.repeat(np.arange(lo.size), n)
    start = np.repeat(lo - (np.cumsum(n) - n), n)
    return owner, start + np.arange(total)


def candidate_pairs(
    points: np.ndarray, tracks: np.ndarray, max_disp: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (point, track) index pairs closer than ``max_disp``, with their distances."""
    k, m = points.shape[0], tracks.shape[0]
    if k == 0 or m == 0:
        e = np.zeros(0, np.int64)
        return e, e, np.zeros(0)
    if k * m <= _DENSE_PAIRS:
        d = np.hypot(points[:, None, 0] - tracks[None, :, 0], points[:, None, 1] - tracks[None, :, 1])
        pi, tj = np.nonzero(d <= max_disp)
        return pi, tj, d[pi, tj]
    # grid of max_disp cells: a pair within max_disp lies in the same or a neighbouring cell
    cell = float(max_disp)
    pc = np.floor(points / cell).astype(np.int64)
    tc = np.floor(tracks / cell).astype(np.int64)
    lo_x = min(pc[:, 0].min(), tc[:, 0].min()) - 1
    lo_y = min(pc[:, 1].min(), tc[:, 1].min()) - 1
    span = int(max(pc[:, 1].max(), tc[:, 1].max()) - lo_y + 3)
    tkey = (tc[:, 0] - lo_x) * span + (tc[:, 1] - lo_y)
    order = np.argsort(tkey, kind="stable")
    skey = tkey[order]
    pis, tjs = [], []
    for ox in (-1, 0, 1):
        for oy in (-1, 0, 1):
            key = (pc[:, 0] + ox - lo_x) * span + (pc[:, 1] + oy - lo_y)
            lo = np.searchsorted(skey, key, "left")
            hi = np.searchsorted(skey, key, "right")
            owner, idx = _expand(lo, hi)
            pis.append(owner)
            tjs.append(order[idx])
    pi = np.concatenate(pis)
    tj = np.concatenate(tjs)
    d = np.hypot(points[pi, 0] - tracks[tj, 0], points[pi, 1] - tracks[tj, 1])
    near = d <= max_disp
    return pi[near], tj[near], d[near]


def greedy_links(
    pi: np.ndarray, tj: np.ndarray, d: np.ndarray, n_points: int, n_tracks: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one links, closest pairs first (ties: lower track, then lower point index).

    Computed in rounds: every pair that is the nearest free candidate of both its point and its
    track is linked (greedy would link it too: nothing closer competes for either end), the
    pairs touching a linked point or track are dropped, and so on until none are left.
    """
    order = np.lexsort((pi, tj, d))
    pi, tj, d = pi[order], tj[order], d[order]
    out_p, out_t, out_d = [], [], []
    first_p = np.empty(n_points, np.int64)
    first_t = np.empty(n_tracks, np.int64)
    used_p = np.zeros(n_points, bool)
    used_t = np.zeros(n_tracks, bool)
    while pi.size:
        # the first (= nearest) remaining pair of each point and of each track: written in
        # reverse, so that for a repeated index the first pair's rank is the one that stays
        rank = np.arange(pi.size)
        first_p[pi[::-1]] = rank[::-1]
        first_t[tj[::-1]] = rank[::-1]
        mutual = (first_p[pi] == rank) & (first_t[tj] == rank)
        lp, lt = pi[mutual], tj[mutual]
        out_p.append(lp)
        out_t.append(lt)
        out_d.append(d[mutual])
        used_p[lp] = True
        used_t[lt] = True
        keep = ~(used_p[pi] | used_t[tj])
        pi, tj, d = pi[keep], tj[keep], d[keep]
    if not out_p:
        e = np.zeros(0, np.int64)
        return e, e, np.zeros(0)
    if len(out_p) == 1:
        return out_p[0], out_t[0], out_d[0]
    return np.concatenate(out_p), np.concatenate(out_t), np.concatenate(out_d)


class Tracker:
    """Live linking of each frame's atoms into tracks, with hop events; see the module docstring.

    After each :meth:`update`: :attr:`hops` (this frame's :class:`HopEvent` list), :attr:`ended`
    (ids of the tracks that ended before this frame), :attr:`truncated` (atoms of this frame
    beyond ``max_atoms``, left untracked). Running totals: :attr:`frames`, :attr:`n_tracks`,
    :attr:`n_hops`, :attr:`n_truncated`, :attr:`resets`.
    """

    def __init__(
        self,
        max_disp: float = 7.0,
        memory: int = 2,
        hop_distance: float = HOP_DISTANCE,
        max_atoms: int = 4096,
    ):
        if not max_disp > 0 or memory < 0 or not hop_distance > 0 or max_atoms < 1:
            raise ValueError(
                f"need max_disp > 0, memory >= 0, hop_distance > 0, max_atoms >= 1; got {max_disp}, {memory},"
                f" {hop_distance}, {max_atoms}"
            )
        self.max_disp, self.memory = float(max_disp), int(memory)
        self.hop_distance, self.max_atoms = float(hop_distance), int(max_atoms)
        self.frames = self.n_tracks = self.n_hops = self.n_truncated = self.resets = 0
        self._next_id = 0
        self.reset()
        self.resets = 0

    def reset(self) -> None:
        """End every track (a series restart, a new frame size); ids keep counting up."""
        self._ids = np.zeros(0, np.int64)
        self._pos = np.zeros((0, 2))
        self._last = np.zeros(0, np.int64)
        self._image_id: int | None = None
        self._shape: tuple[int, ...] | None = None
        self.hops: list[HopEvent] = []
        self.ended = np.zeros(0, np.int64)
        self.truncated = 0
        self.resets += 1

    @property
    def live(self) -> int:
        """Tracks that can still be continued."""
        return int(self._ids.size)

    def update(
        self, positions: np.ndarray, image_id: int | None = None, shape: tuple[int, ...] | None = None
    ) -> np.ndarray:
        """Link one frame's atoms (K, 2) ``[x, y]``; returns their track ids (K,) int64 (-1: untracked).

        ``image_id``: the frame's id (gaps count as frames unseen; None: the previous one + 1);
        ``shape``: the frame's shape, to reset the tracks when it changes.
        """
        pos = np.asarray(positions, np.float64).reshape(-1, 2)
        if image_id is None:
            image_id = 0 if self._image_id is None else self._image_id + 1
        image_id = int(image_id)
        ended_by_reset = np.zeros(0, np.int64)
        if (self._image_id is not None and image_id <= self._image_id) or (
            shape is not None and self._shape is not None and tuple(shape) != self._shape
        ):
            ended_by_reset = self._ids
            self.reset()
        if shape is not None:
            self._shape = tuple(shape)
        self.frames += 1
        self.hops = []

        # the tracks still alive at this frame
        alive = image_id - self._last <= self.memory + 1
        self.ended = np.concatenate([ended_by_reset, self._ids[~alive]])
        if not alive.all():
            self._ids, self._pos, self._last = self._ids[alive], self._pos[alive], self._last[alive]

        k = pos.shape[0]
        ids = np.full(k, -1, np.int64)
        use = np.isfinite(pos).all(axis=1)
        self.truncated = 0
        if k > self.max_atoms:
            over = np.flatnonzero(use)[self.max_atoms :]
            use[over] = False
            self.truncated = int(over.size)
            self.n_truncated += self.truncated
        idx = np.flatnonzero(use)
        pts = pos[idx]
        pi, tj, d = candidate_pairs(pts, self._pos, self.max_disp)
        lp, lt, ld = greedy_links(pi, tj, d, pts.shape[0], self._pos.shape[0])
        ids[idx[lp]] = self._ids[lt]

        hop = ld > self.hop_distance
        for p, t, dist in zip(lp[hop], lt[hop], ld[hop]):
            self.hops.append(
                HopEvent(
                    int(self._ids[t]),
                    int(self._last[t]),
                    image_id,
                    (float(self._pos[t, 0]), float(self._pos[t, 1])),
                    (float(pts[p, 0]), float(pts[p, 1])),
                    float(dist),
                )
            )
        self.n_hops += len(self.hops)
        self._pos[lt] = pts[lp]
        self._last[lt] = image_id

        new = np.ones(idx.size, bool)
        new[lp] = False
        n_new = int(new.sum())
        if n_new:
            fresh = np.arange(self._next_id, self._next_id + n_new, dtype=np.int64)
            self._next_id += n_new
            self.n_tracks += n_new
            ids[idx[new]] = fresh
            self._ids = np.concatenate([self._ids, fresh])
            self._pos = np.concatenate([self._pos, pts[new]])
            self._last = np.concatenate([self._last, np.full(n_new, image_id, np.int64)])
        self._image_id = image_id
        return ids


def link_frames(
    positions: list[np.ndarray], max_disp: float = 7.0, memory: int = 2, hop_distance: float = HOP_DISTANCE
) -> tuple[list[np.ndarray], list[HopEvent]]:
    """Offline: a :class:`Tracker` over a movie's atoms (frame t has image id t).

    Returns the track ids of every frame and every hop event.
    """
    tr = Tracker(max_disp=max_disp, memory=memory, hop_distance=hop_distance, max_atoms=2**31 - 1)
    ids, hops = [], []
    for t, p in enumerate(positions):
        ids.append(tr.update(p, image_id=t))
        hops.extend(tr.hops)
    return ids, hops
