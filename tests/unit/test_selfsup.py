"""The self-supervised causal denoiser and ``train``'s choice by the ground-truth-free score (issue 24):
the network's blindness to each frame's own scan line and its causality, export through the engine,
a short real training that beats raw, and the movie checks that change the plan (one line each)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from livedenoise.analysis import CausalFilter, noise_model
from livedenoise.engine import Engine
from livedenoise.io import write_imagej
from livedenoise.sim import DenseConfig, simulate_dense
from trainer.auto import AutoConfig, plan_movie, train_auto
from trainer.selfsup import CausalDenoiser, SelfSupConfig, blind_lines, causal_index, merge_lines, train_selfsup

SMALL = SelfSupConfig(frames=4, widths=(8, 12, 16), shuffle=2, steps=30, batch=4, crop=32, eval_every=15)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="module")
def lattice() -> np.ndarray:
    """A MoS2 lattice at the project's low dose (counts), 40 frames of 128²."""
    return simulate_dense(DenseConfig(kind="mos2", frames=40, seed=3)).noisy[:, :128, :128].astype(np.float32)


@pytest.fixture(scope="module")
def stripes() -> np.ndarray:
    """A smooth drifting pattern at a few counts a pixel, 24 frames of 64²: quick to learn."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64].astype(np.float32)
    clean = np.stack([2.0 + 1.5 * np.sin((xx + 0.3 * t) / 2.5) * np.cos(yy / 4.0) for t in range(24)])
    return rng.poisson(clean).astype(np.float32)


def test_the_output_for_a_line_never_sees_that_line_of_the_current_frame():
    """Exactly so for the network; the window's mean and spread, which scale its input, are the one
    (global, 1/(frames*H*W)) path by which a line reaches its own output."""
    torch.manual_seed(0)
    net = CausalDenoiser(SMALL).eval()
    z = torch.randn(1, 4, 32, 32)
    base = net.predict(z)
    for row in (0, 7, 16, 31):
        y = z.clone()
        y[0, -1, row] += torch.randn(32) * 10  # the current frame's line: its noise, offset, shift
        diff = (net.predict(y) - base).abs()[0, 0].sum(1)
        assert diff[row] == 0  # never in that line's own output
        assert diff.sum() > 0  # ... but in its neighbours'
    y = z.clone()
    y[0, :3] += 1.0  # the past frames are read whole
    assert not torch.allclose(net.predict(y), base)
    x = torch.rand(2, 4, 32, 32) * 5
    assert torch.allclose(net(x * 3 + 7), net(x), atol=1e-5)  # units: an analog gain and offset change nothing


def test_blind_lines_replace_each_parity_by_its_neighbours_and_merge_back():
    f = torch.arange(6, dtype=torch.float32).reshape(1, 1, 6, 1).expand(1, 1, 6, 2)
    a, b = blind_lines(f)
    assert a[0, 0, :, 0].tolist() == [1.0, 1.0, 2.0, 3.0, 4.0, 5.0]  # even lines from the odd around them
    assert b[0, 0, :, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 4.0]  # odd lines from the even around them
    assert torch.equal(merge_lines(f, f * 0), torch.stack([f[0, 0, 0::2], f[0, 0, 0::2] * 0], 1).reshape(1, 1, 6, 2))


def test_windows_restart_at_scene_changes_as_the_engine_does_at_a_series():
    idx = causal_index(8, 3, [5])
    assert idx[0].tolist() == [0, 0, 0] and idx[4].tolist() == [2, 3, 4]
    assert idx[5].tolist() == [5, 5, 5] and idx[7].tolist() == [5, 6, 7]


def test_a_short_training_beats_raw_on_held_out_frames_and_exports_for_the_engine(stripes, lattice, tmp_path):
    plan, _ = plan_movie(stripes, False, 4)
    res = train_selfsup(stripes, plan.train, plan.held, replace(SMALL, steps=120, lr=3e-3, eval_every=40), log=lambda m: None)
    assert len(res.curve) == 3 and max(g for _, g in res.curve) > 2.0  # dB over raw on frames it never trained on
    assert res.best_step == max(res.curve, key=lambda c: c[1])[0]
    movie = tmp_path / "lattice.tif"
    write_imagej(movie, lattice[:24], pixel_size_nm=0.04)
    out = tmp_path / "selfsup.onnx"
    summary = train_auto(AutoConfig(frames=movie, out=out, method="selfsup", steps=20, window=4, selfsup=SMALL), log=lambda m: None)
    engine = Engine(out, provider="cpu")
    assert engine.card.preset == "selfsup" and engine.card.input_frames == 4  # and the movie's normalisation
    assert summary["method"] == "selfsup" and set(engine.card.scores) == {"selfsup"}
    result = engine.infer(list(lattice[:12]), series=[0] * 12)
    assert not result.errors and np.isfinite(np.stack(result.outputs)).all()


def test_auto_picks_by_the_score_and_writes_every_candidate_in_the_card(lattice, tmp_path):
    movie = tmp_path / "lattice.tif"
    write_imagej(movie, lattice, pixel_size_nm=0.04)
    out = tmp_path / "auto.onnx"
    lines: list[str] = []
    summary = train_auto(AutoConfig(frames=movie, out=out, steps=10, window=4, shipped=False, selfsup=SMALL), log=lines.append)
    cands = summary["candidates"]
    assert {"filter", "selfsup", "noise2atom"} <= set(cands)
    assert "not trained" in cands["noise2atom"]["note"]  # a lattice: not Noise2Atom's world
    best = max((c for c in cands.values() if "gain_db" in c), key=lambda c: c["gain_db"])
    assert cands[summary["method"]] is best
    picked = [line for line in lines if line.startswith("picked ")]
    assert len(picked) == 1 and "by the ground-truth-free score on" in picked[0]
    card = Engine(out, provider="cpu").card
    assert card.scores[summary["method"]] == pytest.approx(best["gain_db"], abs=1e-3)
    assert card.training["movie"]["held_out"] == [30, 40]


def _one_line(tmp_path, frames, **kw) -> tuple[dict, list[str]]:
    movie = tmp_path / "movie.tif"
    write_imagej(movie, frames.astype(np.float32))
    lines: list[str] = []
    summary = train_auto(AutoConfig(frames=movie, out=tmp_path / "m.onnx", steps=4, window=4, shipped=False, selfsup=SMALL, **kw),
                         log=lines.append)
    Engine(tmp_path / "m.onnx", provider="cpu")  # whatever happened, a model the engine takes was written
    return summary, lines


def test_a_constant_or_saturated_movie_gets_the_causal_filter_and_says_why(tmp_path):
    summary, lines = _one_line(tmp_path, np.full((20, 128, 128), 7.0))
    assert summary["method"] == "filter" and any("the movie is constant" in line for line in lines)
    sat = np.full((20, 128, 128), 4095.0)
    sat[:, :10] = np.random.default_rng(0).poisson(100, (20, 10, 128))
    summary, lines = _one_line(tmp_path, sat)
    assert summary["method"] == "filter" and any("saturated" in line for line in lines)


def test_too_few_frames_train_the_one_frame_model_and_say_so(lattice, tmp_path):
    summary, lines = _one_line(tmp_path, lattice[:8], method="selfsup")
    assert any("too few for temporal self-supervision" in line for line in lines)
    assert summary["candidates"]["selfsup"]["config"]["frames"] == 1


def test_frames_averaged_in_time_are_detected_and_trained_on_one_frame(lattice, tmp_path):
    averaged = 0.5 * (lattice[1:] + lattice[:-1])
    assert noise_model(averaged).shared
    summary, lines = _one_line(tmp_path, averaged, method="selfsup")
    assert any("consecutive frames share noise" in line for line in lines)
    assert summary["candidates"]["selfsup"]["config"]["frames"] == 1


def test_a_scene_change_restarts_the_windows_and_a_filter_is_written_for_it(lattice, tmp_path):
    other = simulate_dense(DenseConfig(kind="particle", frames=20, seed=4)).noisy[:, :128, :128].astype(np.float32)
    frames = np.concatenate([lattice[:20], other])
    summary, lines = _one_line(tmp_path, frames, method="filter")
    assert summary["movie"]["scene_changes"] == [20]
    assert any(line.startswith("scene change at frame 20") for line in lines)
    flt = CausalFilter(**summary["candidates"]["filter"]["filter"])
    assert 1 <= flt.window <= 16


def test_a_diverging_training_falls_back_to_the_causal_filter_in_one_line(lattice, tmp_path, monkeypatch):
    import trainer.selfsup as selfsup

    monkeypatch.setattr(selfsup.F, "mse_loss", lambda a, b: (a - b).pow(2).mean() * float("nan"))
    summary, lines = _one_line(tmp_path, lattice[:24], method="selfsup")
    assert summary["method"] == "filter"
    assert [line for line in lines if "diverged" in line] == [
        "selfsup: self-supervised training diverged at step 1 (loss nan): not a candidate; the causal filter is kept instead"
    ]


def test_the_shipped_generalist_is_fine_tuned_where_its_network_matches_and_kept_when_it_scores_better(lattice, tmp_path):
    from livedenoise.engine import default_model_path
    from trainer.selfsup import SIZES, weights_of

    general = default_model_path().parent / "general.onnx"
    rt8 = SelfSupConfig(frames=8, widths=SIZES["rt"])
    weights = weights_of(general, rt8)
    assert weights is not None and set(weights) == {name for name, _ in CausalDenoiser(rt8).named_parameters()}
    assert weights_of(general, replace(rt8, frames=4)) is None and weights_of(general, replace(rt8, widths=SIZES["large"])) is None
    movie = tmp_path / "lattice.tif"
    write_imagej(movie, lattice[:32], pixel_size_nm=0.04)
    lines: list[str] = []
    quick = replace(rt8, batch=2, eval_every=4)
    summary = train_auto(AutoConfig(frames=movie, out=tmp_path / "m.onnx", method="selfsup", steps=8, selfsup=quick), log=lines.append)
    selfsup = summary["candidates"]["selfsup"]
    # 8 steps from scratch learn next to nothing; 4 from the generalist start from a denoiser
    assert selfsup["start"] == "generalist"
    assert selfsup["held_out_gain_by_start"]["generalist"] > selfsup["held_out_gain_by_start"]["scratch"] + 1.0
    assert any(line.startswith("selfsup: kept the run fine-tuned from the generalist") for line in lines)
    unmatched = train_auto(AutoConfig(frames=movie, out=tmp_path / "s.onnx", method="selfsup", steps=4, window=4, selfsup=SMALL),
                           log=lambda m: None)
    assert unmatched["candidates"]["selfsup"]["start"] == "scratch"
