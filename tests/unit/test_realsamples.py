"""benchmarks/realsamples.py's measuring pieces (benchmarks/_realmeasure.py) on small synthetic movies."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks._realmeasure import (
    candidates,
    choose_threshold,
    evaluate_targets,
    hop_outcomes,
    misordered,
    pooled_f1,
    replay_guard,
    scored_index,
    true_gain,
    wilson,
)
from livedenoise.analysis import CausalFilter
from livedenoise.sim import render_atoms


def test_wilson_matches_the_closed_form_and_stays_in_0_1():
    p, lo, hi = wilson(8, 10)
    assert p == 0.8
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert wilson(0, 5)[1] == 0.0 and wilson(5, 5)[2] == 1.0
    assert all(math.isnan(v) for v in wilson(0, 0))


def _static(frames: int = 48, seed: int = 0, dose: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64]
    clean = 0.5 + dose * (0.5 + 0.5 * np.sin(xx / 3.0) * np.cos(yy / 4.0))
    truth = np.broadcast_to(clean, (frames, 64, 64)).astype(np.float32)
    return rng.poisson(truth).astype(np.float32), truth


def test_true_gain_is_zero_for_raw_and_ignores_an_affine_map():
    noisy, truth = _static(dose=300.0)  # signal far above the noise: the affine fit hardly shrinks
    idx = np.arange(4, 40)
    assert true_gain(noisy, noisy, truth, idx) == pytest.approx(0.0, abs=1e-9)
    mean4 = CausalFilter(4, 0.0).apply(noisy)
    g = true_gain(mean4, noisy, truth, idx)
    assert 5.5 < g < 6.5  # a mean of 4 independent frames: a quarter of the variance, 6 dB
    assert true_gain(3.0 * mean4 - 7.0, noisy, truth, idx) == pytest.approx(g, abs=1e-6)
    assert list(scored_index(slice(64, 112))) == list(range(64, 110))


def test_f1_drops_columns_outside_the_field():
    pos = np.array([[[10.2, 12.7], [30.5, 20.1], [np.nan, np.nan], [50.0, 44.4]]] * 3, np.float32)
    pos[1, 1] = np.nan  # the second column left the field in frame 1
    frames = np.stack([render_atoms(p[~np.isnan(p).any(1)], (64, 64), sigma=1.0) for p in pos]).astype(np.float32)
    cands = candidates(frames)
    thr = choose_threshold(cands, pos)
    r = pooled_f1(cands, pos, thr)
    assert r["f1"] == 1.0 and r["n_true"] == 8  # NaN rows neither found nor missed
    assert pooled_f1(cands, pos, 10.0)["recall"] == 0.0


def test_hop_outcomes_count_the_new_site_within_two_frames_and_the_ghost_at_the_old():
    t = 6
    pos = np.zeros((t, 2, 2))
    pos[:, 0] = [20.0, 20.0]
    pos[3:, 0] = [25.0, 20.0]  # atom 0 hops 5 px at frame 3
    pos[:, 1] = [40.0, 40.0]
    found = [np.array(p, np.float64) for p in pos]
    found[3] = np.array([[20.3, 20.0], [40.0, 40.0]])  # frame of the hop: old site still shown, new not yet
    r = hop_outcomes(found, pos, range(0, t))
    assert r == {"hops": 1, "found_new": 1, "ghost_old": 1}  # found at frame 4, within 2 frames
    found[4] = np.array([[40.0, 40.0]])
    assert hop_outcomes(found, pos, range(0, t))["found_new"] == 0
    pos2 = pos.copy()
    pos2[3:, 1] = [20.2, 20.1]  # another atom took the old site: a detection there is no ghost
    found2 = [np.array(p, np.float64) for p in pos2]
    assert hop_outcomes(found2, pos2, range(0, t))["ghost_old"] == 0
    assert hop_outcomes(found, pos, range(4, t))["hops"] == 0


def test_the_replayed_guard_says_fits_for_the_truth_and_does_not_fit_for_raw():
    noisy, truth = _static(frames=48, dose=2.0)
    idx = np.arange(2, 46)
    good = replay_guard(noisy, truth, idx)
    bad = replay_guard(noisy, noisy, idx)
    assert good["state"] == "fits" and bad["state"] == "does not fit"
    assert bad["advantage_db"] < -1.0 < 1.0 < good["advantage_db"]
    assert 32 <= good["decided_after_frames"] <= 44  # 4 blocks of 8 scored frames at least
    assert good["decided_after_s"] == pytest.approx(good["decided_after_frames"] / 150.0)
    assert good["decided_after_s_at_score_rate"] == pytest.approx(good["decided_after_frames"] / 10.0)
    few = replay_guard(noisy, truth, idx[:10])
    assert few["state"] == "undecided" and few["decided_after_frames"] is None and few["lean"] == "fits"


def test_misordered_counts_only_pairs_far_enough_apart():
    true = {"a": 20.0, "b": 21.0, "c": 21.3, "d": 25.0}
    est = {"a": 1.0, "b": 0.5, "c": 2.0, "d": 4.0}
    pairs, wrong = misordered(true, est)
    assert pairs == 5  # every pair but b-c (0.3 dB apart)
    assert [(w["a"], w["b"]) for w in wrong] == [("a", "b")]


def _rows(psnr: dict[str, float]) -> list[dict]:
    return [{"method": k, "psnr": v} for k, v in psnr.items()]


def test_targets_meet_and_miss_with_their_numbers():
    guard = {"state": "does not fit", "decided_after_frames": 40, "decided_after_s_at_score_rate": 4.0,
             "advantage_db": -2.0, "se_db": 0.3}
    real = _rows({"raw": 10.0, "causal-5+gaussian": 20.0, "truth-tuned": 22.0, "auto": 23.5, "shipped:general": 20.5,
                  "shipped:lowdose": 19.0})
    real[-1]["guard"] = guard
    sparse = _rows({"raw": 10.0, "causal-5+gaussian": 20.0, "truth-tuned": 21.0, "auto": 24.9, "shipped:lowdose": 25.0})
    sparse[-2]["f1"], sparse[-1]["f1"] = 0.905, 0.91
    out = evaluate_targets({"real-x": {"kind": "real", "rows": real, "selfsup_train_s": 1500.0},
                            "sparse-y": {"kind": "sparse", "rows": sparse}})
    by = {(t["target"].split(":")[0].split(" ")[0], t["case"]): t for t in out}
    assert by[("trained", "real-x")]["met"] is True and "+1.50 dB over the filter" in by[("trained", "real-x")]["detail"]
    assert by[("general", "real-x")]["met"] is True
    assert by[("guard", "real-x lowdose")]["met"] is True
    assert by[("self-supervised", "real-x")]["met"] is False  # 25 min
    assert by[("sparse", "sparse-y")]["met"] is True  # F1 -0.005, PSNR -0.1
    sparse[-2]["psnr"] = 24.7
    assert evaluate_targets({"s": {"kind": "sparse", "rows": sparse}})[0]["met"] is False
    # undecided when the held-out stream ends, inside the 30 s the guard may take: not judged
    short = guard | {"state": "undecided", "decided_after_frames": None, "decided_after_s_at_score_rate": None,
                     "frames": 22, "lean": "does not fit"}
    real[-1]["guard"] = short
    t = next(t for t in evaluate_targets({"r": {"kind": "real", "rows": real}}) if t["target"].startswith("guard"))
    assert t["met"] is None and "2.2 s" in t["detail"]
    real[-1]["guard"] = short | {"frames": 400}  # 40 s of scored frames and still undecided: missed
    t = next(t for t in evaluate_targets({"r": {"kind": "real", "rows": real}}) if t["target"].startswith("guard"))
    assert t["met"] is False


def test_train_jobs_skip_what_is_done_and_keep_the_recorded_options(tmp_path):
    import json

    from benchmarks._realrun import train_jobs
    from benchmarks.realsamples import train_options

    work = tmp_path / "work"
    jobs = train_jobs(tmp_path / "cases", work, ["real-au", "sim-mos2"], steps=200, minutes=3.0, noise2atom=True)
    assert [j[0] for j in jobs] == ["real-au/auto", "real-au/noise2atom", "sim-mos2/auto", "sim-mos2/noise2atom"]
    auto_cmd = jobs[0][1]
    assert auto_cmd[auto_cmd.index("--keep") + 1] == str(work / "real-au/candidates")
    assert train_options(" ".join(auto_cmd)) == "--steps 200 --minutes 3.0"
    (work / "real-au/auto.run.json").write_text(json.dumps({"rc": 0}))
    (work / "sim-mos2/auto.run.json").write_text(json.dumps({"rc": 1}))  # failed: run again
    (work / "real-au/candidates").mkdir()
    (work / "real-au/candidates/noise2atom.onnx").write_bytes(b"")  # train already trained Noise2Atom there
    again = train_jobs(tmp_path / "cases", work, ["real-au", "sim-mos2"], steps=None, minutes=None, noise2atom=True)
    assert [j[0] for j in again] == ["sim-mos2/auto", "sim-mos2/noise2atom"]
    assert "--steps" not in again[0][1] and "--method" not in again[0][1]
