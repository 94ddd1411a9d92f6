"""The guard through a real daemon and ``denoise`` (issues 19 and 24): a model a causal filter beats
on a dense lattice, with the content estimate saying why; a model that beats every filter; a card
without training-content figures; ``--no-guard``."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile

from livedenoise.analysis import (
    NO_EXPECTS,
    SampleContent,
    atom_width,
    compare_content,
    estimate_content,
    measure_fit,
    read_noise_of,
    unexplained,
)
from livedenoise.daemon import GuardConfig, QueueConfig
from livedenoise.daemon._guard import StreamGuard
from livedenoise.engine import ModelCard
from livedenoise.protocol import encode_image
from livedenoise.sim import SimConfig, render_atoms, simulate_movie
from livedenoise.testing import DEFAULT_NORM, build_onnx_model

SIZE = 128
FAST = GuardConfig(window=24, interval=0.2, score_rate=100)


def hexagonal(spacing: float = 7.0, margin: float = 3.0) -> np.ndarray:
    n = int(SIZE / spacing) + 4
    i, j = np.meshgrid(np.arange(-n, n), np.arange(-n, n))
    x = (i + 0.5 * j).ravel() * spacing
    y = j.ravel() * spacing * math.sqrt(3) / 2
    keep = (x >= margin) & (x < SIZE - margin) & (y >= margin) & (y < SIZE - margin)
    return np.stack([x[keep], y[keep]], axis=1)


def dense_frames(n: int, seed: int = 0) -> np.ndarray:
    """A lattice at the simulator's dose (300 e-/px) and background, Poisson counts, ``<u2``."""
    truth = 2.4e-4 + render_atoms(hexagonal(), SIZE)
    return np.random.default_rng(seed).poisson(300 * truth + 0.5, (n, SIZE, SIZE)).astype("<u2")


def sparse_frames(n: int, seed: int) -> np.ndarray:
    return simulate_movie(SimConfig(size=SIZE, frames=n, seed=seed)).noisy_as("<u2")


@pytest.fixture(scope="module")
def sparse_card() -> ModelCard:
    expects = estimate_content(sparse_frames(32, seed=21).astype(np.float32))
    assert expects.reliable and not expects.lattice
    return ModelCard(preset="test-conv", normalisation=DEFAULT_NORM, expects=expects.to_dict())


def stream_until(push, sub, frames, series_id, predicate, start_id=0, timeout=60.0) -> dict:
    """Send ``frames`` over and over (one series) until a stats header satisfies ``predicate``."""
    import time

    deadline = time.monotonic() + timeout
    i = start_id
    while time.monotonic() < deadline:
        for frame in frames:
            push.send_multipart(encode_image(frame, series_id=series_id, image_id=i))
            i += 1
        stats = sub.last_stats or {}
        try:
            return sub.stats_until(predicate, timeout=0.5)
        except AssertionError:
            continue
    raise AssertionError(f"stats never satisfied the condition; last: {stats}")


def truth_model(path, truth: np.ndarray, card: ModelCard):
    """A model that knows the answer: it writes the clean frame whatever it reads (``0 * input +
    truth``), so no causal filter can come near it."""
    from onnx import TensorProto, helper, numpy_helper

    from livedenoise.engine import INPUT_NAME, METADATA_KEY, OUTPUT_NAME

    lo, hi = float(truth.min()), float(truth.max())
    target = ((truth - lo) / (hi - lo) * 2 - 1).astype(np.float32)[None, None]
    nodes = [
        helper.make_node("ReduceMean", [INPUT_NAME], ["m"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["z", "truth"], [OUTPUT_NAME]),
    ]
    inits = [numpy_helper.from_array(np.zeros(1, np.float32), "zero"), numpy_helper.from_array(target, "truth")]
    graph = helper.make_graph(
        nodes, "truth", [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 1, SIZE, SIZE])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", 1, SIZE, SIZE])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, card.to_json()
    path.write_bytes(model.SerializeToString())
    return path


def test_a_model_a_causal_filter_beats_does_not_fit_and_the_content_says_why(
    tmp_path, sparse_card, detector, daemon_factory, subscriber, caplog
):
    model = build_onnx_model(tmp_path / "sparse.onnx", card=sparse_card)  # a random convolution: worse than a blur
    push, source = detector()
    with caplog.at_level(logging.INFO, logger="livedenoise.guard"):
        daemon = daemon_factory(model=model, source=source, pull=True, queue=QueueConfig(lossless=True), guard=FAST)
        sub = subscriber(daemon.publish_address, topics=(b"stats",))
        first = sub.wait_ready()
        assert first["guard"] == "undecided" and first["score_frames"] == 0  # no frame yet: no evidence
        bad = stream_until(push, sub, dense_frames(16), 2,
                           lambda s: s.get("guard") == "does not fit" and s.get("guard_density_ratio") is not None)
        assert daemon.stop() == 0
    assert bad["score_frames"] >= 8 and bad["score_filter_db"] > bad["score_db"] + 0.25
    assert bad["score_advantage_db"] == pytest.approx(bad["score_db"] - bad["score_filter_db"], abs=0.01)
    assert bad["guard_message"].startswith("a causal filter (")
    assert "beats this model by" in bad["guard_message"]
    # why: the content estimate's sentence follows
    assert bad["guard_density_ratio"] > 2 and "density" in bad["guard_reasons"] and "lattice" in bad["guard_reasons"]
    assert "; this model expects about " in bad["guard_message"] and "on a lattice with" in bad["guard_message"]
    assert bad["scored"] >= bad["score_frames"] and bad["guard_failed"] == 0 and bad["score_ms"] > 0
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "livedenoise.guard"]
    assert warned and warned[0].getMessage().startswith("guard: a causal filter (")


def test_a_model_that_beats_every_causal_filter_fits_without_a_warning(
    tmp_path, sparse_card, detector, daemon_factory, subscriber, caplog
):
    clean = 300 * (2.4e-4 + render_atoms(hexagonal(), SIZE)) + 0.5
    card = ModelCard(preset="oracle", normalisation=DEFAULT_NORM, training={"frame_shape": [64, 64]})
    model = truth_model(tmp_path / "oracle.onnx", clean, card)
    frames = np.random.default_rng(7).poisson(clean, (24, SIZE, SIZE)).astype("<u2")
    push, source = detector()
    with caplog.at_level(logging.INFO, logger="livedenoise.guard"):
        daemon = daemon_factory(model=model, source=source, pull=True, queue=QueueConfig(lossless=True), guard=FAST)
        sub = subscriber(daemon.publish_address, topics=(b"stats",))
        sub.wait_ready()
        good = stream_until(push, sub, frames, 1, lambda s: s.get("guard") == "fits")
        assert daemon.stop() == 0
    assert good["score_db"] > good["score_filter_db"] + 1 and good["score_filter_db"] > 3
    assert good["guard_message"].startswith("this model beats the best causal filter (")
    assert good["guard_message"].endswith("; frames 128x128, the model was trained on 64x64")  # the guard says so
    assert "guard_density_ratio" not in good  # an older card (no expects): no content figures, the measured verdict only
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "livedenoise.guard"]
    lines = [r.getMessage() for r in caplog.records if r.name == "livedenoise.guard"]
    assert lines[0] == f"guard: {NO_EXPECTS}; the measured fit is on"


def test_no_guard_runs_nothing_and_says_off(tmp_path, sparse_card, detector, daemon_factory, subscriber):
    model = build_onnx_model(tmp_path / "sparse.onnx", card=sparse_card)
    _, source = detector()
    daemon = daemon_factory(model=model, source=source, pull=True, guard=None)
    stats = subscriber(daemon.publish_address, topics=(b"stats",)).wait_ready()
    assert daemon.guard is None
    assert stats["guard"] == "off" and stats["guard_message"] == "serve --no-guard" and "unexplained_frames" not in stats


def run_denoise(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "livedenoise", "denoise", *map(str, args)], capture_output=True, text=True, timeout=120
    )


def test_denoise_warns_where_a_filter_beats_the_model_says_why_and_reports_the_unexplained_signal(
    tmp_path, sparse_card, write_tiff
):
    model = build_onnx_model(tmp_path / "sparse.onnx", card=sparse_card)
    frames = dense_frames(40, seed=3)
    proc = run_denoise(write_tiff(frames), "-o", tmp_path / "out.tif", "--model", model)
    assert proc.returncode == 0, proc.stderr
    out = tifffile.imread(tmp_path / "out.tif")  # the denoised movie as written, against the raw frames
    raw = frames.astype(np.float32)
    fit = measure_fit(raw, out)
    expected = compare_content(SampleContent.from_dict(sparse_card.expects), estimate_content(raw))
    assert fit.state == "does not fit" and expected.fits is False
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {fit.message}; {expected.message}"]
    assert f"score: {fit.model_db:+.2f} dB over raw (ground-truth-free, 38 frames); best causal filter {fit.filter_db:+.2f} dB" in proc.stdout
    line = next(line for line in proc.stdout.splitlines() if line.startswith("unexplained signal per frame:"))
    sigma = atom_width(SampleContent.from_dict(sparse_card.expects))
    noise = read_noise_of(raw)
    single = np.mean([unexplained(f, d, sigma, read_noise=noise).counts for f, d in zip(raw, out)])
    assert f"mean {single:.4g} counts" in line and "over 40 frames;" in line


def test_denoise_with_an_older_card_says_there_is_no_guard(tmp_path, write_tiff):
    model = build_onnx_model(tmp_path / "old.onnx")
    proc = run_denoise(write_tiff(sparse_frames(6, seed=5)), "-o", tmp_path / "out.tif", "--model", model)
    assert proc.returncode == 0, proc.stderr
    assert f"guard: {NO_EXPECTS}" in proc.stderr.splitlines()
    assert "warning:" not in proc.stderr and "guard: no frames scored yet" not in proc.stdout
    assert "unexplained signal per frame: mean " in proc.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a thread's CPU time from /proc")
@pytest.mark.parametrize("score_rate", [0.0, 10.0])
def test_an_idle_guard_sleeps(score_rate):
    """Without frames to score (none yet, fewer than three after a series start, or scoring off)
    the guard thread waits for frames or its next estimate: it once spun there, a core and the GIL."""
    guard = StreamGuard(None, GuardConfig(interval=5.0, score_rate=score_rate))
    guard.start()
    try:
        time.sleep(0.1)
        tid = guard._thread.native_id
        cpu0 = thread_cpu_s(tid)
        time.sleep(0.5)
        assert thread_cpu_s(tid) - cpu0 < 0.05
    finally:
        guard.close()


def thread_cpu_s(tid: int) -> float:
    """CPU time of one of this process's threads (Linux schedstat), seconds."""
    with open(f"/proc/self/task/{tid}/schedstat") as fh:
        return int(fh.read().split()[0]) / 1e9
