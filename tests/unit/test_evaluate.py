"""evaluate(): the affine fit and its sign, PSNR/SSIM, detection F1, CSS; the CLI round trip."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from livedenoise.cli import main
from livedenoise.errors import LivedenoiseError
from livedenoise.io import read_movie
from livedenoise.scoring import affine_fit, evaluate, load_positions, match_points, psnr
from livedenoise.sim import SimConfig, simulate_movie


@pytest.fixture(scope="module")
def movie():
    return simulate_movie(SimConfig(frames=10, seed=21))


def test_truth_vs_affine_transformed_truth(movie) -> None:
    shifted = 37.0 * movie.truth + 2.5  # other units, same image
    rep = evaluate(shifted, movie.truth, movie.positions)
    assert rep.psnr > 100 or math.isinf(rep.psnr)
    assert rep.ssim == pytest.approx(1.0, abs=1e-6)
    assert rep.slope == pytest.approx(1 / 37.0, rel=1e-4)
    assert rep.inverted is False and rep.inverted_frames == 0
    assert rep.f1 == 1.0 and rep.precision == 1.0 and rep.recall == 1.0
    assert rep.loc_error_px < 0.1
    assert rep.css_mean > 0.8


def test_inverted_contrast_is_flagged(movie) -> None:
    rep = evaluate(1.0 - 50.0 * movie.truth, movie.truth, movie.positions)
    assert rep.inverted is True and rep.slope < 0 and rep.inverted_frames == movie.truth.shape[0]
    assert rep.psnr > 100 or math.isinf(rep.psnr)  # the fit undoes it for PSNR ...
    assert rep.f1 < 0.2  # ... but atoms are searched as bright peaks, so they are lost


def test_noisy_scores_lower_than_truth(movie) -> None:
    noisy = evaluate(movie.noisy, movie.truth, movie.positions)
    assert noisy.psnr < 40
    assert noisy.f1 < 0.9
    assert 0 < noisy.precision < 1 and 0 < noisy.recall <= 1
    assert noisy.ssim < 0.999
    assert noisy.css_mean < 0.5


def test_blank_output_scores_perfect_css_but_bad_psnr_and_f1(movie) -> None:
    blank = np.full_like(movie.truth, 0.3)
    rep = evaluate(blank, movie.truth, movie.positions, ssim=False)
    assert rep.slope == 0.0
    assert rep.psnr < 25
    assert rep.f1 < 0.1


def test_threshold_fixed_and_auto(movie) -> None:
    auto = evaluate(movie.truth, positions=movie.positions)
    assert auto.threshold_rule.startswith("auto")
    fixed = evaluate(movie.truth, positions=movie.positions, threshold=0.004)
    assert fixed.threshold_rule == "fixed" and fixed.f1 == 1.0
    too_high = evaluate(movie.truth, positions=movie.positions, threshold=0.1)
    assert too_high.recall == 0.0 and too_high.f1 == 0.0


def test_psnr_and_fit_helpers() -> None:
    t = np.linspace(0, 1, 100).reshape(10, 10)
    a, c = affine_fit(3 * t - 1, t)
    assert a == pytest.approx(1 / 3) and c == pytest.approx(1 / 3)
    assert psnr(t, t, 1.0) == math.inf
    assert psnr(t + 0.1, t, 1.0) == pytest.approx(20.0)
    assert affine_fit(np.ones(5), np.arange(5.0)) == (0.0, 2.0)


def test_matching_is_one_to_one_within_radius() -> None:
    true = np.array([[0.0, 0.0], [10.0, 0.0]])
    found = np.array([[0.5, 0.0], [0.2, 0.0], [11.6, 0.0], [30.0, 0.0]])
    ti, fi, d = match_points(true, found, radius=1.5)
    assert sorted(zip(ti.tolist(), fi.tolist())) == [(0, 1)]  # 11.6 is 1.6 px away: no match
    assert d.tolist() == pytest.approx([0.2])
    assert match_points(true, np.zeros((0, 2)))[0].size == 0


def test_shape_errors(movie) -> None:
    with pytest.raises(LivedenoiseError, match="shape"):
        evaluate(movie.noisy, movie.truth[:, :64])
    with pytest.raises(LivedenoiseError, match="frames"):
        evaluate(movie.noisy, positions=movie.positions[:3])
    with pytest.raises(LivedenoiseError, match="NaN"):
        evaluate(np.full((2, 8, 8), np.nan))


def test_report_json_has_no_infinities(movie) -> None:
    rep = evaluate(movie.truth, movie.truth, movie.positions)
    text = rep.to_json()
    assert "Infinity" not in text and "NaN" not in text
    d = json.loads(text)
    assert d["psnr"] is None and d["f1"] == 1.0 and len(d["per_frame"]["css"]) == 9


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "livedenoise", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_cli_round_trip(tmp_path: Path) -> None:
    r = _cli(
        "simulate", "movie", "--out", "n.tif", "--truth", "t.tif", "--positions", "a.json",
        "--frames", "6", "--size", "96", "--dose", "200", "--seed", "3", cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    noisy = read_movie(tmp_path / "n.tif")
    truth = read_movie(tmp_path / "t.tif")
    pos, groups = load_positions(tmp_path / "a.json")
    assert noisy.shape == truth.shape == (6, 96, 96)
    assert pos.shape[0] == 6 and pos.shape[1] == groups.size
    assert noisy.mean() == pytest.approx(200 * truth.mean() + 0.5, rel=0.05)

    r = _cli(
        "evaluate", "--denoised", "t.tif", "--truth", "t.tif", "--positions", "a.json", "--json", "rep.json",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "F1" in r.stdout and "PSNR" in r.stdout
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert rep["f1"] == 1.0 and rep["inverted"] is False and rep["frames"] == 6

    r = _cli("evaluate", "--denoised", "n.tif", "--positions", "a.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "CSS" in r.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--denoised", "missing.tif"], "not found"),
        (["--denoised", "bad.tif"], "cannot read denoised"),
        (["--denoised", "t.tif", "--positions", "bad.json"], "cannot read positions"),
        (["--denoised", "t.tif", "--positions", "wrong.json"], "frames"),
        (["--denoised", "t.tif", "--truth", "small.tif"], "shape"),
        (["--denoised", "rgb.tif"], "RGB"),
    ],
)
def test_cli_bad_files_one_line(tmp_path: Path, args: list[str], message: str, monkeypatch, capsys) -> None:
    import tifffile

    tifffile.imwrite(tmp_path / "t.tif", np.zeros((3, 32, 32), np.float32), photometric="minisblack")
    tifffile.imwrite(tmp_path / "small.tif", np.zeros((3, 16, 16), np.float32), photometric="minisblack")
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((32, 32, 3), np.uint8), photometric="rgb")
    (tmp_path / "bad.tif").write_bytes(b"not a tiff at all")
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "wrong.json").write_text(json.dumps({"frames": [[[1.0, 2.0]]]}))
    # in-process through the real entry point (a subprocess per case is slow on a busy CI box)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["livedenoise", "evaluate", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], err


def test_group_recalls_and_hops() -> None:
    m = simulate_movie(SimConfig(frames=24, hop_prob=0.15, seed=5))
    rep = evaluate(m.truth, positions=m.positions, groups=m.groups)
    assert rep.recall_single == 1.0 and rep.recall_cluster == 1.0
    assert rep.n_hops > 5 and rep.hop_recall == 1.0 and rep.hop_loc_error_px < 0.1
    # a causal mean over 5 frames leaves a landed atom at 1/5 of its height: hops are lost
    c = np.cumsum(m.truth.astype(np.float64), axis=0)
    mean5 = np.stack([(c[t] - (c[t - 5] if t >= 5 else 0)) / min(t + 1, 5) for t in range(len(c))])
    smeared = evaluate(mean5, positions=m.positions, groups=m.groups)
    assert smeared.hop_recall < 0.5 < smeared.f1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--out", "ro/n.tif"], "cannot write noisy movie"),
        (["--out", "n.tif", "--gradient", "-1"], "--gradient"),
    ],
)
def test_simulate_cli_bad_output_one_line(tmp_path: Path, args, message, monkeypatch, capsys) -> None:
    (tmp_path / "ro").write_text("a file, not a folder")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["livedenoise", "simulate", "movie", "--frames", "2", "--size", "32", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines
