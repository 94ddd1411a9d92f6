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
   *candidate* hop, with the track's position and image id before and after.
6. **Confirmation** (``confirm_frames``, default 1): most candidates on a model's output are not
   hops but an atom missed for a frame whose track was linked to a nearby false atom or a
   neighbour; the atom then reappears at its old site, and the false atom vanishes. So a
   candidate becomes a :class:`HopEvent` (in :attr:`Tracker.hops`) only once the track has been
   seen again within ``confirm_px`` (2 px: an atom found in two frames moves up to ~1.9 px on a
   single-frame model's output) of where it landed in each of its next ``confirm_frames``
   observations (a frame where the track is missed waits, within ``memory``), while no other
   atom is found within ``confirm_px`` of the site it left. It is dropped as soon as either
   fails, or when the track ends or the tracks reset. Until then the track's hops are measured
   from its *anchor*, the position before the candidate: a track that comes back there did not
   hop (twice), and one that goes on elsewhere is a new candidate from the anchor. The event
   names the frame the hop landed on (``image_id_after``); it is *reported* later, one frame
   later when nothing is missed. ``confirm_frames=0`` reports every candidate at once (each link
   longer than ``hop_distance``: the rule before confirmation).

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
>>> tr.hops, tr.pending  # a candidate: confirmed or not by the next frame
([], 1)
>>> tr.update(np.array([[14.8, 10.3], [30.1, 30.0]]), image_id=2).tolist()
[0, 1]
>>> [(h.track_id, h.image_id_before, h.image_id_after, h.after) for h in tr.hops]
[(0, 0, 1, (14.5, 10.0))]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["HOP_DISTANCE", "MAX_LINK", "HopEvent", "Tracker", "link_frames"]

HOP_DISTANCE = 2.5  # px: a hop, live and in the scoring (single atoms jitter ~0.45 px a frame, hop 3-6 px)
MAX_LINK = 7.0  # px: the longest link of a track, above the longest hop to follow, below the atoms' spacing
CONFIRM_FRAMES = 1  # observations after a candidate hop that must confirm it
CONFIRM_PX = 2.0  # px: "near" the landing site and the site left (an atom found twice moves up to ~1.9 px)
_DENSE_PAIRS = 4096  # up to this many atom x track pairs the all-pairs matrix is cheaper than the grid


@dataclass(frozen=True, slots=True)
class HopEvent:
    """A track whose position jumped more than ``hop_distance`` between two observations (and,
    with confirmation, stayed there); ``image_id_after`` is the frame it landed on."""

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

    After each :meth:`update`: :attr:`hops` (the :class:`HopEvent` list confirmed by this frame:
    with ``confirm_frames`` 1, hops that landed on the previous frame), :attr:`pending` (candidate
    hops waiting for confirmation), :attr:`ended` (ids of the tracks that ended before this frame),
    :attr:`truncated` (atoms of this frame beyond ``max_atoms``, left untracked). Running totals:
    :attr:`frames`, :attr:`n_tracks`, :attr:`n_hops` (confirmed), :attr:`n_candidates`,
    :attr:`n_truncated`, :attr:`resets`.
    """

    def __init__(
        self,
        max_disp: float = MAX_LINK,
        memory: int = 2,
        hop_distance: float = HOP_DISTANCE,
        max_atoms: int = 4096,
        confirm_frames: int = CONFIRM_FRAMES,
        confirm_px: float = CONFIRM_PX,
    ):
        if (not max_disp > 0 or memory < 0 or not hop_distance > 0 or max_atoms < 1 or confirm_frames < 0
                or not confirm_px > 0):
            raise ValueError(
                f"need max_disp > 0, memory >= 0, hop_distance > 0, max_atoms >= 1, confirm_frames >= 0,"
                f" confirm_px > 0; got {max_disp}, {memory}, {hop_distance}, {max_atoms}, {confirm_frames}, {confirm_px}"
            )
        self.max_disp, self.memory = float(max_disp), int(memory)
        self.hop_distance, self.max_atoms = float(hop_distance), int(max_atoms)
        self.confirm_frames, self.confirm_px = int(confirm_frames), float(confirm_px)
        self.frames = self.n_tracks = self.n_hops = self.n_candidates = self.n_truncated = self.resets = 0
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
        # where each track was last *settled* (its position before an unconfirmed candidate hop),
        # from where hops are measured, and the candidates waiting: track id -> (event, confirmations needed)
        self._anchor = np.zeros((0, 2))
        self._anchor_last = np.zeros(0, np.int64)
        self._pending: dict[int, tuple[HopEvent, int]] = {}
        self.ended = np.zeros(0, np.int64)
        self.truncated = 0
        self.resets += 1

    @property
    def live(self) -> int:
        """Tracks that can still be continued."""
        return int(self._ids.size)

    @property
    def pending(self) -> int:
        """Candidate hops waiting for confirmation."""
        return len(self._pending)

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
            self._anchor, self._anchor_last = self._anchor[alive], self._anchor_last[alive]
            for tid in self.ended:
                self._pending.pop(int(tid), None)  # a candidate whose track ended: never confirmed

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
        lp, lt, _ = greedy_links(pi, tj, d, pts.shape[0], self._pos.shape[0])
        ids[idx[lp]] = self._ids[lt]

        self._hop_links(pts, lp, lt, image_id)
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
            self._anchor = np.concatenate([self._anchor, pts[new]])
            self._anchor_last = np.concatenate([self._anchor_last, np.full(n_new, image_id, np.int64)])
        self._image_id = image_id
        return ids

    def _hop_links(self, pts: np.ndarray, lp: np.ndarray, lt: np.ndarray, image_id: int) -> None:
        """Candidate hops of this frame's links (``pts[lp]`` linked to track index ``lt``), and the
        confirmation of those waiting; fills :attr:`hops`, moves the tracks' anchors."""
        new = pts[lp]
        dist = np.hypot(new[:, 0] - self._anchor[lt, 0], new[:, 1] - self._anchor[lt, 1])
        cand = dist > self.hop_distance
        settle = ~cand  # links that move the anchor along
        if self._pending:
            r2 = self.confirm_px**2
            slot = {int(t): i for i, t in enumerate(self._ids[lt].tolist())} if lt.size else {}
            for tid, (event, need) in list(self._pending.items()):
                i = slot.get(tid)
                bx, by = event.before
                near = (pts[:, 0] - bx) ** 2 + (pts[:, 1] - by) ** 2 <= r2
                if i is not None:
                    near[lp[i]] = False
                if near.any():  # the site left is occupied again: a missed atom, not a hop
                    del self._pending[tid]
                    if i is None:  # unseen here: it stays where it is, without a hop
                        j = int(np.flatnonzero(self._ids == tid)[0])
                        self._anchor[j], self._anchor_last[j] = self._pos[j], self._last[j]
                    else:
                        cand[i], settle[i] = False, True
                    continue
                if i is None:
                    continue  # missed in this frame: wait (the track lives ``memory`` frames)
                ax, ay = event.after
                if (new[i, 0] - ax) ** 2 + (new[i, 1] - ay) ** 2 <= r2:  # still where it landed
                    cand[i] = False
                    if need > 1:
                        self._pending[tid] = (event, need - 1)
                    else:
                        del self._pending[tid]
                        self.hops.append(event)
                        settle[i] = True
                else:  # moved on (back home, usually): judged afresh from the anchor
                    del self._pending[tid]
                    settle[i] = not cand[i]
        if cand.any():
            self.n_candidates += int(np.count_nonzero(cand))
            for i in np.flatnonzero(cand).tolist():
                t = lt[i]
                event = HopEvent(
                    int(self._ids[t]),
                    int(self._anchor_last[t]),
                    image_id,
                    (float(self._anchor[t, 0]), float(self._anchor[t, 1])),
                    (float(new[i, 0]), float(new[i, 1])),
                    float(dist[i]),
                )
                if self.confirm_frames:
                    self._pending[event.track_id] = (event, self.confirm_frames)
                else:
                    self.hops.append(event)
                    settle[i] = True
        self._anchor[lt[settle]] = new[settle]
        self._anchor_last[lt[settle]] = image_id


def link_frames(
    positions: list[np.ndarray],
    max_disp: float = MAX_LINK,
    memory: int = 2,
    hop_distance: float = HOP_DISTANCE,
    confirm_frames: int = CONFIRM_FRAMES,
    confirm_px: float = CONFIRM_PX,
) -> tuple[list[np.ndarray], list[HopEvent]]:
    """Offline: a :class:`Tracker` over a movie's atoms (frame t has image id t), the daemon's rule.

    Returns the track ids of every frame and every (confirmed) hop event, in the order reported;
    a candidate hop still unconfirmed at the movie's end is left out, as live.
    """
    tr = Tracker(
        max_disp=max_disp, memory=memory, hop_distance=hop_distance, max_atoms=2**31 - 1,
        confirm_frames=confirm_frames, confirm_px=confirm_px,
    )
    ids, hops = [], []
    for t, p in enumerate(positions):
        ids.append(tr.update(p, image_id=t))
        hops.extend(tr.hops)
    return ids, hops
