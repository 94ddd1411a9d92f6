"""The numpy linker and hop detection on simulated atoms (moving, hopping, missing, restarting,
thousands of them), against a plain-Python greedy linker and trackpy; and the scores against truth
(hops, identity switches, ROC AUC)."""

from __future__ import annotations

import numpy as np
import pytest

from livedenoise.analysis import HopEvent, Tracker, find_atoms, link_frames
from livedenoise.analysis._tracks import candidate_pairs, greedy_links
from livedenoise.scoring import hop_scores, precision_at_recall, true_hops
from livedenoise.scoring._trackscore import evidence_scores, identity_switches, roc_auc
from livedenoise.sim import SimConfig, simulate_movie


def _shuffled(movie_positions: np.ndarray, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each frame's atoms in a random order (a finder sorts by height, not by identity)."""
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(p.shape[0]) for p in movie_positions]
    return [p[q].astype(np.float64) for p, q in zip(movie_positions, perms)], perms


def test_links_jittering_and_hopping_atoms_and_reports_every_hop() -> None:
    """Without confirmation (``confirm_frames=0``, the rule before it): every link longer than the
    hop distance is a hop, reported in the frame it lands."""
    movie = simulate_movie(SimConfig(frames=40, dose=100, seed=4, hop_prob=0.1))
    frames, perms = _shuffled(movie.positions, 1)
    ids, hops = link_frames(frames, max_disp=7.0, confirm_frames=0)
    per_atom = np.stack([i[np.argsort(q)] for i, q in zip(ids, perms)])  # (T, K) in truth order
    assert (per_atom == per_atom[0]).all()  # every atom keeps one id through jitter and hops
    assert np.unique(per_atom[0]).size == movie.positions.shape[1]
    truth = true_hops(movie.positions)
    assert len(truth) > 10
    assert sorted((h.image_id_after, h.track_id) for h in hops) == sorted(
        (h.frame, int(per_atom[0, h.atom])) for h in truth
    )
    s = hop_scores(hops, movie.positions)
    assert s["recall"] == 1.0 and s["precision"] == 1.0 and s["delay_frames"] == 0.0
    assert s["placement_error_px"] < 1e-5 and s["recall_placed"] == 1.0
    sw = identity_switches(frames, ids, movie.positions)
    assert sw["switches"] == 0 and sw["matched_atom_frames"] == sw["atom_frames"]

    # confirmed (the default): the same events, less those nothing could confirm: a hop on the
    # last frame, or one whose atom hops on at once (or just did: then it hops from the site
    # before), or whose old site another atom takes
    ids1, confirmed = link_frames(frames, max_disp=7.0)
    assert [i.tolist() for i in ids1] == [i.tolist() for i in ids]  # confirmation never changes links
    pos = movie.positions
    by_landing = {(h.image_id_after, h.track_id): h for h in hops}
    moved_on = {(h.frame, h.atom) for h in truth}
    expected = set()
    for h in truth:
        t = h.frame
        if t + 1 >= len(pos) or (t + 1, h.atom) in moved_on or (t - 1, h.atom) in moved_on:
            continue
        others = np.delete(pos[t + 1], h.atom, axis=0)
        if (np.hypot(*(others - h.before).T) <= 2.0).any():
            continue
        expected.add(by_landing[(t, int(per_atom[0, h.atom]))])
    assert len(expected) > 10 and expected <= set(confirmed)
    assert all(e.image_id_after < len(pos) - 1 for e in confirmed)
    s1 = hop_scores(confirmed, movie.positions)
    assert s1["precision"] == 1.0 and s1["n_matched"] >= len(expected)  # a double hop: one, from the first site


def _two_atoms(a: tuple[float, float] | None, b: tuple[float, float] | None = (30.0, 30.0), *extra) -> np.ndarray:
    pts = [p for p in (a, b, *extra) if p is not None]
    return np.array(pts, np.float64).reshape(-1, 2)


def test_a_hop_is_reported_once_the_next_frame_confirms_it_naming_the_frame_it_landed_on() -> None:
    tr = Tracker(max_disp=7.0)  # confirm_frames=1
    first = tr.update(_two_atoms((10.0, 10.0)), image_id=0)
    tr.update(_two_atoms((10.3, 9.8)), image_id=1)
    assert tr.update(_two_atoms((14.5, 10.2)), image_id=2).tolist() == first.tolist()
    assert tr.hops == [] and tr.pending == 1 and tr.n_candidates == 1
    tr.update(_two_atoms((14.9, 10.0)), image_id=3)  # still there, the old site empty: a hop
    (h,) = tr.hops
    assert (h.track_id, h.image_id_before, h.image_id_after, h.before, h.after) == (first[0], 1, 2, (10.3, 9.8), (14.5, 10.2))
    assert h.distance == pytest.approx(np.hypot(4.2, 0.4))
    assert tr.pending == 0 and tr.n_hops == 1
    tr.update(_two_atoms((14.6, 10.1)), image_id=4)
    assert tr.hops == [] and tr.n_hops == 1  # reported once
    # a frame where the track is missed waits; it is confirmed when seen again there
    tr.update(_two_atoms((19.0, 10.0)), image_id=5)
    tr.update(_two_atoms(None), image_id=6)
    assert tr.hops == [] and tr.pending == 1
    tr.update(_two_atoms((19.3, 10.4)), image_id=7)
    assert [(h.image_id_before, h.image_id_after, h.before, h.after) for h in tr.hops] == [
        (4, 5, (14.6, 10.1), (19.0, 10.0))
    ]
    # confirm_frames=2: two frames there
    tr2 = Tracker(confirm_frames=2)
    for t, a in enumerate([(10.0, 10.0), (14.0, 10.0), (14.2, 10.0)]):
        tr2.update(_two_atoms(a), image_id=t)
        assert tr2.hops == []
    tr2.update(_two_atoms((14.1, 10.2)), image_id=3)
    assert [(h.image_id_before, h.image_id_after) for h in tr2.hops] == [(0, 1)]


@pytest.mark.parametrize("confirm", [0, 1])
def test_a_missed_atom_whose_track_takes_a_false_one_nearby_is_not_a_hop(confirm: int) -> None:
    """The commonest false hop: the atom missed for a frame, a false atom 3 px away in that frame;
    then the atom is back (and the false one gone, or still there)."""
    for false_stays in (False, True):
        tr = Tracker(max_disp=7.0, confirm_frames=confirm)
        ids = tr.update(_two_atoms((10.0, 10.0)), image_id=0)
        tr.update(_two_atoms((10.2, 10.1)), image_id=1)
        tr.update(_two_atoms(None, (30.0, 30.0), (13.0, 10.5)), image_id=2)  # missed; a false atom
        hops = list(tr.hops)
        back = tr.update(_two_atoms((10.1, 10.0), (30.0, 30.0), *([(13.1, 10.4)] if false_stays else [])), image_id=3)
        hops += tr.hops
        for t in (4, 5):
            tr.update(_two_atoms((10.1, 10.0), (30.0, 30.0), *([(13.1, 10.4)] if false_stays else [])), image_id=t)
            hops += tr.hops
        if confirm:
            assert hops == [] and tr.pending == 0 and tr.n_candidates == 1
        else:  # the rule without confirmation: a hop out, and (when the false atom goes) one back
            assert [h.image_id_after for h in hops] == ([2] if false_stays else [2, 3])
        if not false_stays:
            assert back[0] == ids[0]  # the track is back home


def test_gaps_up_to_memory_keep_the_track_longer_ones_end_it() -> None:
    a, b = np.array([[10.0, 10.0]]), np.array([[40.0, 40.0]])
    tr = Tracker(max_disp=5.0, memory=2)
    first = tr.update(np.concatenate([a, b]), image_id=0)
    tr.update(a + 0.3, image_id=1)  # b missing in frames 1, 2
    tr.update(a + 0.6, image_id=2)
    assert tr.update(np.concatenate([a + 0.9, b + 0.4]), image_id=3).tolist() == first.tolist()
    # now b is missing for 3 frames: its track ends, and it comes back as a new one
    for t in (4, 5, 6):
        tr.update(a + 0.9, image_id=t)
        assert tr.ended.size == 0
    back = tr.update(np.concatenate([a + 1.0, b]), image_id=7)
    assert tr.ended.tolist() == [first[1]]
    assert back[0] == first[0] and back[1] not in first
    # image ids that skip count as frames unseen: a dropped frame is a gap
    assert tr.update(a + 1.0, image_id=11)[0] != first[0]


def test_restart_and_frame_size_change_reset_the_tracks() -> None:
    tr = Tracker()
    p = np.array([[10.0, 10.0], [30.0, 20.0]])
    ids0 = tr.update(p, image_id=5, shape=(64, 64))
    same = tr.update(p, image_id=6, shape=(64, 64))
    assert same.tolist() == ids0.tolist() and tr.resets == 0
    restarted = tr.update(p + 3.0, image_id=0, shape=(64, 64))  # the series restarted
    assert tr.resets == 1 and not set(restarted) & set(ids0) and tr.hops == []
    assert sorted(tr.ended.tolist()) == sorted(ids0.tolist())
    resized = tr.update(p + 3.0, image_id=1, shape=(128, 128))
    assert tr.resets == 2 and not set(resized) & set(restarted)
    tr.reset()
    assert tr.live == 0


def test_empty_frames_and_non_finite_positions() -> None:
    tr = Tracker(memory=1)
    ids = tr.update(np.array([[10.0, 10.0], [np.nan, 5.0]]), image_id=0)
    assert ids[0] >= 0 and ids[1] == -1
    assert tr.update(np.zeros((0, 2)), image_id=1).shape == (0,)
    assert tr.update(np.array([[10.5, 10.0]]), image_id=2)[0] == ids[0]  # one empty frame: a gap
    assert tr.update(np.zeros((0, 2)), image_id=3).size == 0
    assert tr.update(np.zeros((0, 2)), image_id=4).size == 0
    assert tr.update(np.array([[10.5, 10.0]]), image_id=5)[0] != ids[0]


def test_thousands_of_atoms_in_a_noise_frame_are_capped_and_counted() -> None:
    rng = np.random.default_rng(0)
    noise = rng.poisson(0.6, (256, 256)).astype(np.float32)
    atoms = find_atoms(noise, threshold=-np.inf)  # every local maximum: thousands
    assert len(atoms) > 5000
    tr = Tracker(max_disp=7.0, max_atoms=4096)
    ids = tr.update(atoms.positions, image_id=0)
    assert tr.truncated == len(atoms) - 4096 and tr.n_truncated == tr.truncated
    assert (ids[:4096] >= 0).all() and (ids[4096:] == -1).all()
    assert np.unique(ids[:4096]).size == 4096
    again = find_atoms(rng.poisson(0.6, (256, 256)).astype(np.float32), threshold=-np.inf)
    ids2 = tr.update(again.positions, image_id=1)
    linked = ids2[ids2 >= 0]
    assert np.unique(linked).size == linked.size  # one-to-one, even in a crowd
    assert tr.n_truncated == tr.truncated + len(atoms) - 4096


def _reference_greedy(points: np.ndarray, tracks: np.ndarray, max_disp: float) -> dict[int, int]:
    """Plain Python: all pairs within reach, sorted by (distance, track, point), taken greedily."""
    pairs = []
    for i, p in enumerate(points):
        for j, t in enumerate(tracks):
            d = float(np.hypot(*(p - t)))
            if d <= max_disp:
                pairs.append((d, j, i))
    pairs.sort()
    used_p, used_t, out = set(), set(), {}
    for _d, j, i in pairs:
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
            out[i] = j
    return out


@pytest.mark.parametrize("n", [25, 3000])  # the all-pairs path and the grid path
def test_vectorised_greedy_equals_plain_greedy(n: int) -> None:
    rng = np.random.default_rng(n)
    side = 6.0 * np.sqrt(n)  # crowded: several candidates per atom
    tracks = rng.uniform(0, side, (n, 2))
    points = np.concatenate([tracks[: n * 9 // 10] + rng.normal(0, 2.0, (n * 9 // 10, 2)),
                             rng.uniform(0, side, (n // 5, 2))])
    pi, tj, d = candidate_pairs(points, tracks, 7.0)
    lp, lt, _ = greedy_links(pi, tj, d, len(points), len(tracks))
    ref = _reference_greedy(points, tracks, 7.0) if n < 100 else None
    if ref is None:  # too many pairs for the all-pairs loop: the dense path is the reference
        full = np.hypot(points[:, None, 0] - tracks[None, :, 0], points[:, None, 1] - tracks[None, :, 1])
        ii, jj = np.nonzero(full <= 7.0)
        assert sorted(zip(pi.tolist(), tj.tolist())) == sorted(zip(ii.tolist(), jj.tolist()))
        rp, rt, _ = greedy_links(ii, jj, full[ii, jj], len(points), len(tracks))
        ref = dict(zip(rp.tolist(), rt.tolist()))
    assert dict(zip(lp.tolist(), lt.tolist())) == ref
    assert len(ref) > n // 2


@pytest.mark.filterwarnings("ignore:The inplace keyword")  # trackpy 0.7 on pandas 3
def test_same_links_as_trackpy_on_well_separated_atoms() -> None:
    pd = pytest.importorskip("pandas")
    tp = pytest.importorskip("trackpy")
    tp.quiet()
    movie = simulate_movie(SimConfig(frames=30, dose=300, seed=6, hop_prob=0.1, clusters=()))
    rng = np.random.default_rng(3)
    frames = []
    for p in movie.positions.astype(np.float64):
        keep = rng.random(len(p)) > 0.1  # a tenth missed in each frame
        frames.append(p[keep] + rng.normal(0, 0.2, (int(keep.sum()), 2)))
    ids, _ = link_frames(frames, max_disp=7.0, memory=2)
    rows = [(x, y, t, i) for t, f in enumerate(frames) for i, (x, y) in enumerate(f)]
    df = tp.link(pd.DataFrame(rows, columns=["x", "y", "frame", "i"]), search_range=7.0, memory=2)
    theirs = [np.zeros(len(f), np.int64) for f in frames]
    for fr, i, part in zip(df["frame"], df["i"], df["particle"]):
        theirs[int(fr)][int(i)] = int(part)
    # the same partition of detections into tracks
    ours_all, theirs_all = np.concatenate(ids), np.concatenate(theirs)
    pairs = set(zip(ours_all.tolist(), theirs_all.tolist()))
    assert len(pairs) == np.unique(ours_all).size == np.unique(theirs_all).size


def test_hop_scores_count_delay_misses_and_false_hops() -> None:
    pos = np.zeros((7, 2, 2))
    pos[:, 0] = [10.0, 10.0]
    pos[:, 1] = [30.0, 30.0]
    pos[3:, 0] = [14.0, 10.0]  # atom 0 hops at frame 3
    (h,) = true_hops(pos)
    assert (h.atom, h.frame, h.after) == (0, 3, (14.0, 10.0))
    late = HopEvent(0, 3, 4, (10.2, 10.0), (14.3, 10.1), 4.1)  # seen one frame late
    false = HopEvent(1, 2, 3, (30.0, 30.0), (33.0, 30.0), 3.0)
    s = hop_scores([late, false], pos)
    assert (s["n_matched"], s["recall"], s["precision"], s["delay_frames"]) == (1, 1.0, 0.5, 1.0)
    assert s["placement_error_px"] == pytest.approx(np.hypot(0.3, 0.1))
    assert s["recall_by_delay"][0] == 0.0 and s["recall_by_delay"][1] == 1.0
    too_late = HopEvent(0, 3, 6, (10.0, 10.0), (14.0, 10.0), 4.0)  # 3 frames late
    assert hop_scores([too_late], pos, max_delay=2)["recall"] == 0.0
    s3 = hop_scores([too_late], pos)
    assert s3["recall"] == 1.0 and s3["recall_placed"] == 0.0  # found, but not within 2 frames
    wrong_origin = HopEvent(0, 2, 3, (20.0, 20.0), (14.0, 10.0), 11.0)
    assert hop_scores([wrong_origin], pos)["n_matched"] == 0


def test_identity_switches_count_swaps_and_untracked() -> None:
    pos = np.array([[[10.0, 10.0], [30.0, 30.0]]] * 4)
    found = [p.copy() for p in pos]
    ids = [np.array([0, 1]), np.array([0, 1]), np.array([1, 0]), np.array([1, -1])]
    sw = identity_switches(found, ids, pos)
    assert sw["switches"] == 3 and sw["atom_frames"] == 8
    assert sw["per_100"] == pytest.approx(100 * 3 / 8)


def test_roc_auc_and_precision_at_recall() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    s = np.r_[rng.normal(1.0, 1.0, 300), rng.normal(0.0, 1.0, 200)].round(1)  # with ties
    y = np.r_[np.ones(300, bool), np.zeros(200, bool)]
    u = stats.mannwhitneyu(s[y], s[~y]).statistic
    assert roc_auc(s, y) == pytest.approx(u / (300 * 200))
    prec, thr = precision_at_recall(s, y, 0.9)
    kept = s >= thr
    assert (kept & y).sum() >= 0.9 * 300 and prec == pytest.approx(y[kept].mean())
    assert roc_auc(s, np.ones(500, bool)) is None
    # detections 1.5 to 3 px from an atom are misplaced, not invented
    found = [np.array([[10.0, 10.0], [12.0, 10.0], [20.0, 20.0]])]
    e = evidence_scores(found, [np.array([5.0, 1.0, 0.0])], np.array([[[10.0, 10.0]]]))
    assert (e["n_true"], e["n_misplaced"], e["n_invented"], e["auc"]) == (1, 1, 1, 1.0)
