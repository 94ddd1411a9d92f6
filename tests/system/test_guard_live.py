"""The guard through a real daemon and ``denoise`` (issue 19): a model card that expects sparse
atoms, fed sparse frames then a dense lattice; a card without training-content figures;
``--no-guard``."""

from __future__ import annotations

import logging
import math
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from livedenoise.analysis import (
    NO_EXPECTS,
    SampleContent,
    atom_width,
    compare_content,
    estimate_content,
    read_noise_of,
    unexplained,
    unexplained_sum,
)
from livedenoise.daemon import GuardConfig, QueueConfig
from livedenoise.engine import ModelCard
from livedenoise.protocol import encode_image
from livedenoise.sim import SimConfig, render_atoms, simulate_movie
from livedenoise.testing import DEFAULT_NORM, build_onnx_model

SIZE = 128
FAST = GuardConfig(window=16, interval=0.2)


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


def stream_until(push, sub, frames, series_id, predicate, start_id=0, timeout=30.0) -> dict:
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


def test_dense_stream_against_a_sparse_card_does_not_fit_and_is_warned(
    tmp_path, sparse_card, detector, daemon_factory, subscriber, caplog
):
    model = build_onnx_model(tmp_path / "sparse.onnx", card=sparse_card)
    push, source = detector()
    with caplog.at_level(logging.INFO, logger="livedenoise.guard"):
        daemon = daemon_factory(model=model, source=source, pull=True, queue=QueueConfig(lossless=True), guard=FAST)
        sub = subscriber(daemon.publish_address, topics=(b"stats",))
        first = sub.wait_ready()
        assert first["guard"] == "unknown"  # no frame yet: no estimate
        fits = stream_until(push, sub, sparse_frames(16, seed=22), 1, lambda s: s.get("guard") == "fits")
        assert 0.5 < fits["guard_density_ratio"] < 2 and fits["guard_reasons"] == []
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "livedenoise.guard"]
        bad = stream_until(push, sub, dense_frames(16), 2, lambda s: s.get("guard") == "does not fit", start_id=0)
    assert bad["guard_density_ratio"] > 2 and bad["guard_lattice_mismatch"] is True
    assert "density" in bad["guard_reasons"] and "lattice" in bad["guard_reasons"]
    assert bad["guard_message"].startswith("this model expects about ")
    assert "atoms per 100 px²" in bad["guard_message"] and "on a lattice with" in bad["guard_message"]
    assert bad["guard_estimates"] >= 2 and bad["guard_failed"] == 0 and bad["guard_ms"] > 0
    assert bad["unexplained_frames"] > 0 and bad["unexplained_last"] is not None and bad["unexplained_mean"] >= 0
    assert bad["unexplained_window"] >= 0 and 0 <= bad["unexplained_window_fraction"] <= 1
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "livedenoise.guard"]
    assert len(warned) == 1, [r.getMessage() for r in warned]  # at once, then once a minute at most
    assert warned[0].getMessage() == f"guard: {bad['guard_message']}"
    assert daemon.stop() == 0


def test_a_card_without_expects_turns_the_guard_off_with_one_log_line(
    tmp_path, detector, daemon_factory, subscriber, caplog
):
    model = build_onnx_model(tmp_path / "old.onnx")  # a card written before the field
    push, source = detector()
    with caplog.at_level(logging.INFO, logger="livedenoise.guard"):
        daemon = daemon_factory(model=model, source=source, pull=True, queue=QueueConfig(lossless=True), guard=FAST)
        sub = subscriber(daemon.publish_address, topics=(b"stats",))
        sub.wait_ready()
        stats = stream_until(
            push, sub, dense_frames(8), 1,
            lambda s: s.get("unexplained_frames", 0) >= 4 and s.get("unexplained_window") is not None,
        )
        assert daemon.stop() == 0
    assert stats["guard"] == "off" and stats["guard_message"] == NO_EXPECTS
    assert stats["guard_estimates"] >= 1 and "guard_density_ratio" not in stats  # the window's figures, no verdict
    lines = [r.getMessage() for r in caplog.records if r.name == "livedenoise.guard"]
    assert lines == [NO_EXPECTS]


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


def test_denoise_warns_about_a_dense_movie_and_reports_the_unexplained_signal(tmp_path, sparse_card, write_tiff):
    model = build_onnx_model(tmp_path / "sparse.onnx", card=sparse_card)
    frames = dense_frames(12, seed=3)
    proc = run_denoise(write_tiff(frames), "-o", tmp_path / "out.tif", "--model", model)
    assert proc.returncode == 0, proc.stderr
    expected = compare_content(
        SampleContent.from_dict(sparse_card.expects), estimate_content(frames.astype(np.float32))
    )
    assert expected.fits is False
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {expected.message}"]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("unexplained signal per frame:"))
    # the denoised movie as written, against the raw frames: the figures printed are their means
    out = tifffile.imread(tmp_path / "out.tif")
    raw = frames.astype(np.float32)
    sigma = atom_width(SampleContent.from_dict(sparse_card.expects))
    noise = read_noise_of(raw)
    single = np.mean([unexplained(f, d, sigma, read_noise=noise).counts for f, d in zip(raw, out)])
    assert f"mean {single:.4g} counts" in line and "over 12 frames" in line
    summed = unexplained_sum(raw, out, sigma, read_noise=noise)
    assert line.endswith(f"; {summed.counts:.4g} counts ({summed.fraction:.1%}) in sums of 12 frames")


def test_denoise_with_an_older_card_says_there_is_no_guard(tmp_path, write_tiff):
    model = build_onnx_model(tmp_path / "old.onnx")
    proc = run_denoise(write_tiff(sparse_frames(6, seed=5)), "-o", tmp_path / "out.tif", "--model", model)
    assert proc.returncode == 0, proc.stderr
    assert f"guard: {NO_EXPECTS}" in proc.stderr.splitlines()
    assert "warning:" not in proc.stderr
    assert "unexplained signal per frame: mean " in proc.stdout
