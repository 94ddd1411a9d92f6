"""Scoring evidence, hops and tracks against ground truth (offline; re-exported by ``evaluate``).

The truth is the simulator's (and dev-D's): ``positions`` (T, K, 2), ``[x, y]`` of every atom in
every frame, the same atom order in each, so an atom's identity is its index. A true **hop** is
a step longer than ``hop_px`` (2.5 px, the evaluation's rule) between consecutive frames: single
atoms jitter by about 0.45 px per frame and hop by 3 to 6 px, so the two never mix.

* **Evidence**: each detection is *true* when matched to a true atom (greedy one-to-one within
  ``radius``, :func:`~livedenoise.scoring.match_points`), *invented* when no true atom
  is within ``invented_radius`` (default 3 px, twice the matching radius), and *misplaced* in
  between: a real atom placed 1.5 to 3 px off (mostly in clusters), which the raw counts do
  support, so it is left out of the AUC (counted; ``auc_strict`` counts it as invented). ROC AUC
  of the evidence score for true against invented (the Mann-Whitney U statistic, ties half; NaN
  scores rank lowest), and the precision among the detections kept when the score threshold
  keeps a fraction ``recall`` of the true ones (next to the precision of keeping them all).
* **Hops**: a detected :class:`~livedenoise.analysis.HopEvent` (frame = image id) matches a true
  hop of atom k at frame t when it comes 0 to ``max_delay`` frames after it, lands within
  ``radius`` of atom k's true position in the frame it is reported, and starts within
  ``before_radius`` of atom k's position just before the hop; pairs are taken by increasing
  delay, then distance, each once. Recall, precision, placement error (the landing distance),
  delay in frames, and the issue's figure: the share of true hops placed within ``place_px``
  (1 px) and ``place_frames`` (2 frames).
* :func:`score_tracks` runs the three on the atoms a method found, linked as ``serve --atoms``
  links them: the one track scorer of :func:`~livedenoise.scoring.evaluate` and the benchmarks.
* **Identity switches**: in every frame the true atoms are matched to the detections; for each
  atom, every change of the track id it is matched to (frames where it is not found are skipped;
  an untracked detection, id -1, counts as a change) is a switch. Per 100 true atom-frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..analysis import ATOM_SIGMA, HOP_DISTANCE, MAX_LINK, HopEvent, accumulate_evidence, atom_evidence, link_frames
from ..errors import LivedenoiseError
from ._detection import MATCH_RADIUS, match_points

__all__ = [
    "TrackScores",
    "TrueHop",
    "evidence_scores",
    "hop_scores",
    "identity_switches",
    "label_detections",
    "precision_at_recall",
    "roc_auc",
    "score_tracks",
    "true_hops",
]


@dataclass(frozen=True, slots=True)
class TrueHop:
    atom: int  # index in the truth's atom order
    frame: int  # the first frame at the new place
    before: tuple[float, float]  # [x, y] in frame - 1
    after: tuple[float, float]  # [x, y] in frame


def label_detections(
    found: list[np.ndarray], true_positions: np.ndarray, radius: float = MATCH_RADIUS
) -> list[np.ndarray]:
    """Per frame, a bool per detection: True where it is matched to a true atom (else invented)."""
    if len(found) != len(true_positions):
        raise ValueError(f"{len(found)} frames of detections, {len(true_positions)} of truth")
    out = []
    for f, t in zip(found, true_positions):
        f = np.asarray(f, np.float64).reshape(-1, 2)
        lab = np.zeros(f.shape[0], bool)
        _, fi, _ = match_points(t, f, radius)
        lab[fi] = True
        out.append(lab)
    return out


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve: P(score of a true one > score of an invented one), ties half.

    NaN scores rank below every number. None when either class is empty.

    >>> roc_auc(np.array([0.9, 0.8, 0.3, 0.1]), np.array([True, False, True, False]))
    0.75
    """
    s = np.asarray(scores, np.float64).ravel()
    y = np.asarray(labels, bool).ravel()
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return None
    s = np.where(np.isnan(s), -np.inf, s)
    order = np.argsort(s, kind="stable")
    ss = s[order]
    ranks = np.empty(s.size)
    # mid-ranks of tied runs
    starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
    ends = np.r_[starts[1:], ss.size]
    mid = (starts + ends - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(mid, ends - starts)
    u = ranks[y].sum() - n1 * (n1 + 1) / 2.0
    return float(u / (n1 * n0))


def precision_at_recall(scores: np.ndarray, labels: np.ndarray, recall: float = 0.9) -> tuple[float | None, float | None]:
    """Precision of the detections whose score is at least the highest threshold that keeps a
    fraction ``recall`` of the true ones; returns ``(precision, threshold)``."""
    s = np.asarray(scores, np.float64).ravel()
    y = np.asarray(labels, bool).ravel()
    if not y.any():
        return None, None
    s = np.where(np.isnan(s), -np.inf, s)
    true_sorted = np.sort(s[y])[::-1]
    need = max(1, int(np.ceil(recall * true_sorted.size - 1e-9)))
    thr = float(true_sorted[need - 1])
    kept = s >= thr
    return float(y[kept].mean()), thr


def evidence_scores(
    found: list[np.ndarray],
    scores: list[np.ndarray],
    true_positions: np.ndarray,
    radius: float = MATCH_RADIUS,
    recall: float = 0.9,
    invented_radius: float = 2 * MATCH_RADIUS,
) -> dict[str, Any]:
    """How well an evidence score separates true detections from invented ones, over a movie."""
    labels = np.concatenate(label_detections(found, true_positions, radius)) if found else np.zeros(0, bool)
    s = np.concatenate([np.asarray(v, np.float64).ravel() for v in scores]) if scores else np.zeros(0)
    if s.size != labels.size:
        raise ValueError(f"{s.size} scores for {labels.size} detections")
    nearest = []
    for f, t in zip(found, np.asarray(true_positions, np.float64)):
        f = np.asarray(f, np.float64).reshape(-1, 2)
        if f.shape[0] == 0 or t.shape[0] == 0:
            nearest.append(np.full(f.shape[0], np.inf))
            continue
        nearest.append(np.hypot(f[:, None, 0] - t[None, :, 0], f[:, None, 1] - t[None, :, 1]).min(axis=1))
    dist = np.concatenate(nearest) if nearest else np.zeros(0)
    invented = ~labels & (dist > invented_radius)
    sel = labels | invented
    prec, thr = precision_at_recall(s[sel], labels[sel], recall)
    return {
        "auc": roc_auc(s[sel], labels[sel]),
        "auc_strict": roc_auc(s, labels),
        "precision_at_recall": prec,
        "recall": recall,
        "threshold_at_recall": thr,
        "precision_all": float(labels[sel].mean()) if sel.any() else None,
        "n_true": int(labels.sum()),
        "n_invented": int(invented.sum()),
        "n_misplaced": int((~labels & ~invented).sum()),
    }


def true_hops(positions: np.ndarray, hop_px: float = HOP_DISTANCE) -> list[TrueHop]:
    """Every step longer than ``hop_px`` between consecutive frames of the truth, in frame order."""
    pos = np.asarray(positions, np.float64)
    if pos.ndim != 3 or pos.shape[0] < 2:
        return []
    step = np.hypot(*np.diff(pos, axis=0).transpose(2, 0, 1))  # (T-1, K)
    tt, kk = np.nonzero(step > hop_px)
    return [
        TrueHop(int(k), int(t + 1), (float(pos[t, k, 0]), float(pos[t, k, 1])),
                (float(pos[t + 1, k, 0]), float(pos[t + 1, k, 1])))
        for t, k in zip(tt, kk)
    ]


def hop_scores(
    events: list[HopEvent],
    positions: np.ndarray,
    *,
    hop_px: float = HOP_DISTANCE,
    radius: float = MATCH_RADIUS,
    before_radius: float = 2 * MATCH_RADIUS,
    max_delay: int = 5,
    place_px: float = 1.0,
    place_frames: int = 2,
) -> dict[str, Any]:
    """Detected hop events (frame = ``image_id_after``) against the truth's hops; module docstring."""
    pos = np.asarray(positions, np.float64)
    truth = true_hops(pos, hop_px)
    t_count = pos.shape[0]
    cand = []  # (delay, distance, event index, truth index)
    for ei, e in enumerate(events):
        f = int(e.image_id_after)
        if not 0 <= f < t_count:
            continue
        ax, ay = e.after
        bx, by = e.before
        for hi, h in enumerate(truth):
            delay = f - h.frame
            if not 0 <= delay <= max_delay:
                continue
            tx, ty = pos[f, h.atom]
            dist = float(np.hypot(ax - tx, ay - ty))
            if dist > radius or np.hypot(bx - h.before[0], by - h.before[1]) > before_radius:
                continue
            cand.append((delay, dist, ei, hi))
    cand.sort()
    used_e, used_h = set(), set()
    delays, dists = [], []
    for delay, dist, ei, hi in cand:
        if ei in used_e or hi in used_h:
            continue
        used_e.add(ei)
        used_h.add(hi)
        delays.append(delay)
        dists.append(dist)
    n_true, n_det, n_m = len(truth), len(events), len(delays)
    dl, ds = np.asarray(delays), np.asarray(dists)
    placed = int(((dl <= place_frames) & (ds <= place_px)).sum()) if n_m else 0
    return {
        "n_true": n_true,
        "n_detected": n_det,
        "n_matched": n_m,
        "recall": n_m / n_true if n_true else None,
        "precision": n_m / n_det if n_det else None,
        "placement_error_px": float(ds.mean()) if n_m else None,
        "delay_frames": float(dl.mean()) if n_m else None,
        "recall_by_delay": {d: (int((dl <= d).sum()) / n_true if n_true else None) for d in range(max_delay + 1)},
        "recall_placed": placed / n_true if n_true else None,  # within place_px and place_frames
        "place_px": place_px,
        "place_frames": place_frames,
    }


def identity_switches(
    found: list[np.ndarray], track_ids: list[np.ndarray], true_positions: np.ndarray, radius: float = MATCH_RADIUS
) -> dict[str, Any]:
    """Identity switches of the tracks against the truth's atoms (module docstring)."""
    pos = np.asarray(true_positions, np.float64)
    if not len(found) == len(track_ids) == pos.shape[0]:
        raise ValueError(f"{len(found)} frames of detections, {len(track_ids)} of track ids, {pos.shape[0]} of truth")
    k_count = pos.shape[1]
    last = np.full(k_count, -2, np.int64)  # -2: not matched yet
    switches = matched = 0
    for f, ids, t in zip(found, track_ids, pos):
        ids = np.asarray(ids, np.int64).ravel()
        ti, fi, _ = match_points(t, np.asarray(f, np.float64).reshape(-1, 2), radius)
        tid = ids[fi]
        seen = last[ti] != -2
        switches += int((seen & ((tid != last[ti]) | (tid < 0))).sum())
        last[ti] = tid
        matched += ti.size
    atom_frames = pos.shape[0] * k_count
    return {
        "switches": switches,
        "atom_frames": atom_frames,
        "matched_atom_frames": matched,
        "per_100": 100.0 * switches / atom_frames if atom_frames else None,
    }


@dataclass(frozen=True, slots=True)
class TrackScores:
    """:func:`score_tracks`' result. Evidence is scored twice, and the field says which: each
    frame's own z (``evidence_frame``) or z accumulated along its track, as ``serve --atoms``
    publishes it (``evidence_track``); the two AUCs differ, so no name stands for both."""

    n_found: int  # detections over the movie
    hops: dict[str, Any]  # hop_scores: recall, precision, placement_error_px, delay_frames, recall_placed, n_*
    switches: dict[str, Any]  # identity_switches: switches, per_100, atom_frames
    evidence_frame: dict[str, Any] | None = None  # evidence_scores of each frame's z; None without raw frames
    evidence_track: dict[str, Any] | None = None  # evidence_scores of the z accumulated along the tracks


def score_tracks(
    found: list[np.ndarray],
    true_positions: np.ndarray,
    raw: np.ndarray | None = None,
    *,
    radius: float = MATCH_RADIUS,
    max_disp: float = MAX_LINK,
    memory: int = 2,
    hop_px: float = HOP_DISTANCE,
    confirm_frames: int | None = None,
    sigma: float = ATOM_SIGMA,
    read_noise: float = 0.0,
) -> TrackScores:
    """Link ``found`` (per frame, (N, 2) [x, y]) as ``serve --atoms`` does (``max_disp``, ``memory``,
    ``hop_px``, ``confirm_frames``: :func:`~livedenoise.analysis.link_frames`' parameters, its
    default confirmation where None) and score its hops and identity switches against the truth;
    with the ``raw`` frames (detector counts), also each atom's evidence
    (:func:`~livedenoise.analysis.atom_evidence` with ``sigma`` and ``read_noise``), per frame and
    accumulated along the tracks."""
    if not 0 < hop_px < max_disp:
        raise LivedenoiseError(f"need 0 < hop_px < max_disp, got {hop_px:g} and {max_disp:g}")
    link: dict[str, Any] = {"max_disp": max_disp, "memory": memory, "hop_distance": hop_px}
    if confirm_frames is not None:
        link["confirm_frames"] = confirm_frames
    ids, events = link_frames(found, **link)
    hops = hop_scores(events, true_positions, hop_px=hop_px, radius=radius)
    switches = identity_switches(found, ids, true_positions, radius)
    n_found = int(sum(len(f) for f in found))
    if raw is None:
        return TrackScores(n_found, hops, switches)
    ev = [atom_evidence(r, f, sigma, read_noise=read_noise) for r, f in zip(raw, found)]
    z = [e.z for e in ev]
    z_acc, _ = accumulate_evidence(ids, z, [e.llr for e in ev])
    return TrackScores(n_found, hops, switches, evidence_scores(found, z, true_positions, radius),
                       evidence_scores(found, z_acc, true_positions, radius))
