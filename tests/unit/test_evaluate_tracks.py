"""``evaluate`` with tracks, hops and evidence (issue 17): the figures of a movie whose atoms and
hops are known, and of invented atoms that the raw counts do not support."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from livedenoise.analysis import find_atoms
from livedenoise.cli import main
from livedenoise.errors import LivedenoiseError
from livedenoise.scoring import TrackScores, evaluate, score_tracks, true_hops
from livedenoise.sim import SimConfig, render_atoms, simulate_movie


@pytest.fixture(scope="module")
def hopping():
    """Dose 300, frequent hops; the "denoised" movie is the truth plus an invented atom in every
    other frame, placed where no true atom is within 8 px (so the raw counts have none there)."""
    m = simulate_movie(SimConfig(frames=12, seed=4, hop_prob=0.1))
    rng = np.random.default_rng(0)
    den = m.truth / m.truth.max()
    invented = []
    for t in range(0, len(den), 2):
        while True:
            xy = rng.uniform(12, 116, 2)
            if np.hypot(*(m.positions[t] - xy).T).min() > 8:
                break
        den[t] += render_atoms(xy[None], den.shape[1:], peak=1.0)
        invented.append((t, xy))
    return m, den.astype(np.float32), invented


def reported_hops(positions: np.ndarray) -> list:
    """The true hops the tracks report (hops are confirmed by the next frame, ``Tracker``): not
    one on the last frame, and of an atom that hops in consecutive frames, one event (from the
    first site to the last, matched to the first hop)."""
    truth = true_hops(positions)
    moved = {(h.frame, h.atom) for h in truth}
    return [h for h in truth if h.frame < len(positions) - 1 and (h.frame - 1, h.atom) not in moved]


def run_cli(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["livedenoise", "evaluate", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_hops_tracks_and_evidence_of_a_known_movie(hopping):
    m, den, invented = hopping
    n_hops = len(true_hops(m.positions))
    assert n_hops >= 5
    rep = evaluate(den, positions=m.positions, threshold=0.4, raw=m.noisy, ssim=False)
    # every true atom found, the invented ones too: the truth's hops are the tracks' hops
    assert rep.recall == 1.0 and rep.n_found == rep.n_true + len(invented)
    n_reported = len(reported_hops(m.positions))
    assert n_reported >= 4 and rep.hop_events_precision == 1.0 and rep.n_hop_events == n_reported
    assert rep.hop_events_recall == n_reported / n_hops and rep.hop_events_placed == rep.hop_events_recall
    assert rep.hop_events_delay_frames <= 1.0 and rep.hop_events_placement_px < 0.2
    assert rep.id_switches == 0 and rep.id_switches_per_100 == 0.0
    # evidence: the raw counts support the true atoms, not the invented ones
    assert rep.n_invented == len(invented)
    assert rep.evidence_auc_track > 0.95 and rep.evidence_auc_frame > 0.9
    assert rep.evidence_precision_at_90 > rep.evidence_precision_all
    d = json.loads(rep.to_json(per_frame=False))
    assert d["evidence_auc_track"] == rep.evidence_auc_track and d["hop_events_recall"] == rep.hop_events_recall
    # without the raw frames, no evidence; tracks that cannot follow a hop (3-6 px): none seen,
    # and each hopped atom starts a new track (an identity switch)
    plain = evaluate(den, positions=m.positions, threshold=0.4, ssim=False, max_disp=2.6)
    assert plain.evidence_auc_track is None and plain.n_invented is None
    assert plain.hop_events_recall == 0.0 and plain.id_switches == n_hops


def test_score_tracks_is_what_evaluate_reports(hopping):
    """One track scorer: evaluate's fields are score_tracks' figures, per frame and per track apart."""
    m, den, _ = hopping
    rep = evaluate(den, positions=m.positions, threshold=0.4, raw=m.noisy, ssim=False)
    found = [find_atoms(d, threshold=0.4).positions for d in den]
    ts = score_tracks(found, m.positions, m.noisy)
    assert isinstance(ts, TrackScores) and ts.n_found == rep.n_found
    assert ts.evidence_frame["auc"] == rep.evidence_auc_frame and ts.evidence_track["auc"] == rep.evidence_auc_track
    assert ts.hops["recall"] == rep.hop_events_recall and ts.switches["per_100"] == rep.id_switches_per_100
    plain = score_tracks(found, m.positions)  # no raw frames: no evidence
    assert plain.evidence_frame is None and plain.evidence_track is None and plain.hops == ts.hops
    with pytest.raises(LivedenoiseError):
        score_tracks(found, m.positions, hop_px=8.0, max_disp=7.0)


def test_identity_switches_count_a_track_that_swaps_atoms(hopping):
    m, den, _ = hopping
    swapped = m.positions.copy()
    swapped[6:, [0, 1]] = swapped[6:, [1, 0]]  # from frame 6 on, atoms 0 and 1 trade places in the truth
    rep = evaluate(den, positions=swapped, threshold=0.4, ssim=False)
    assert rep.id_switches == 2 and rep.id_switches_per_100 == pytest.approx(200 / swapped[:, :, 0].size)


def test_cli_reports_evidence_hops_and_switches(hopping, tmp_path: Path, monkeypatch, capsys):
    m, den, _ = hopping
    tifffile.imwrite(tmp_path / "den.tif", den, photometric="minisblack")
    tifffile.imwrite(tmp_path / "noisy.tif", m.noisy.astype(np.float32), photometric="minisblack")
    (tmp_path / "atoms.json").write_text(json.dumps({"frames": m.positions.tolist()}))
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(
        ["--denoised", "den.tif", "--positions", "atoms.json", "--raw", "noisy.tif", "--threshold", "0.4",
         "--json", "rep.json"], monkeypatch, capsys,
    )
    assert code == 0, err
    assert "evidence AUC" in out and "hop events" in out and "identity switches" in out
    rep = json.loads((tmp_path / "rep.json").read_text())
    n_hops = len(true_hops(m.positions))
    assert rep["evidence_auc_track"] > 0.95 and rep["id_switches"] == 0
    assert rep["hop_events_recall"] == len(reported_hops(m.positions)) / n_hops and rep["hop_events_precision"] == 1.0
    code, _, err = run_cli(["--denoised", "den.tif", "--raw", "noisy.tif"], monkeypatch, capsys)
    assert code == 2 and err.strip().startswith("error:") and "--raw needs --positions" in err
    tifffile.imwrite(tmp_path / "small.tif", m.noisy[:, :64].astype(np.float32), photometric="minisblack")
    code, _, err = run_cli(["--denoised", "den.tif", "--positions", "atoms.json", "--raw", "small.tif"], monkeypatch, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "raw has shape" in err
    code, _, err = run_cli(["--denoised", "den.tif", "--positions", "atoms.json", "--hop-px", "9"], monkeypatch, capsys)
    assert code == 2 and "hop_px < max_disp" in err
