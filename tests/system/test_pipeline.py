"""The live pipeline end to end on real sockets: replay -> serve -> subscriber.

Where exact delivery matters the detector side uses PUSH/PULL (or XPUB waiting for the
subscription), so no frame is lost to ZMQ's PUB/SUB slow-joiner behaviour.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from livedenoise.analysis import css
from livedenoise.daemon import QueueConfig
from livedenoise.daemon._queue import FrameQueue, QueueClosed
from livedenoise.engine import (
    INPUT_NAME,
    Engine,
    EngineConfig,
    ModelCard,
    Normalisation,
    causal_windows,
    normalise,
    to_display,
)
from livedenoise.errors import ModelError
from livedenoise.protocol import encode_end, encode_image, encode_start, pack
from livedenoise.testing import LOOPBACK, SERVE_PUBLISH, free_addr, read_address, reference_denoise

# --------------------------------------------------------------------------- batcher


def test_queue_drops_oldest_when_full_in_live_mode():
    q = FrameQueue(3)
    for i in range(5):
        q.put(i)
    assert q.dropped == 2 and q.get_batch(8, 0) == [2, 3, 4]


def test_queue_blocks_in_lossless_mode_and_never_drops():
    q = FrameQueue(2, lossless=True)
    assert q.put(0) and q.put(1)
    assert q.put(2, timeout=0.05) is False  # full: not queued, not dropped
    got = []
    t = threading.Thread(target=lambda: got.append(q.put(2, timeout=5)))
    t.start()
    time.sleep(0.05)
    assert q.get_batch(1, 0) == [0]
    t.join(5)
    assert got == [True] and q.dropped == 0 and q.get_batch(8, 0) == [1, 2]


def test_adaptive_batching_waits_at_most_max_wait():
    q = FrameQueue(64)
    q.put("a")
    t0 = time.perf_counter()
    assert q.get_batch(8, 0.05) == ["a"]  # alone: waits for company only max_wait
    assert 0.04 < time.perf_counter() - t0 < 0.5
    for i in range(10):
        q.put(i)
    t0 = time.perf_counter()
    assert q.get_batch(8, 1.0) == list(range(8))  # a full batch is taken at once
    assert time.perf_counter() - t0 < 0.1
    assert q.get_batch(8, 0.0) == [8, 9]
    assert q.get_batch(8, 0.0, timeout=0.01) == []


def test_closed_queue_drains_then_ends():
    q = FrameQueue(4)
    q.put(1)
    q.close()
    with pytest.raises(QueueClosed):
        q.put(2)
    assert q.get_batch(8, 0.0) == [1]
    assert q.get_batch(8, 0.0) is None


# --------------------------------------------------------------------------- sink


# --------------------------------------------------------------------------- engine


def test_engine_groups_mixed_shapes_and_pads_any_size(conv_model):
    engine = Engine(conv_model, provider="cpu", max_batch=3)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 50, s).astype("<u2") for s in [(3, 5), (16, 16), (3, 5), (9, 70), (16, 16)] * 2]
    result = engine.infer(frames)
    assert not result.errors
    for f, out in zip(frames, result.outputs, strict=True):
        assert out.shape == f.shape and out.flags.c_contiguous
        np.testing.assert_allclose(out, reference_denoise(conv_model, f), rtol=0, atol=2e-6)


def test_engine_multi_frame_model_uses_causal_history(build_model):
    card = ModelCard(preset="test-2f", normalisation=Normalisation(0.0, 0.1), input_frames=2)
    path = build_model("twoframe.onnx", card=card)
    engine = Engine(path, provider="cpu")
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    a, b, c = (rng.integers(0, 50, (16, 16)).astype("<u2") for _ in range(3))
    outs = engine.infer([a, b], series=[1, 1]).outputs + engine.infer([c], series=[1]).outputs
    for prev, cur, out in [(a, a, outs[0]), (a, b, outs[1]), (b, c, outs[2])]:
        x = np.stack([normalise(prev, card.normalisation), normalise(cur, card.normalisation)])[None]
        (y,) = sess.run(None, {INPUT_NAME: x})
        np.testing.assert_allclose(out, to_display(y[0, 0]), rtol=0, atol=2e-6)


def test_causal_windows_are_what_the_engine_feeds_a_multi_frame_model(build_model):
    """Training builds its k-frame inputs with causal_windows; serve's engine builds them from its
    per-series history. Both must give the model the same input, the start of a series included."""
    card = ModelCard(preset="test-3f", normalisation=Normalisation(2.0, 0.1), input_frames=3)
    path = build_model("threeframe.onnx", card=card)
    engine = Engine(path, provider="cpu")
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    frames = np.random.default_rng(2).integers(0, 50, (5, 16, 16)).astype("<u2")
    outs = engine.infer(list(frames[:2]), series=[7, 7]).outputs + engine.infer(list(frames[2:]), series=[7] * 3).outputs
    windows = causal_windows(normalise(frames, card.normalisation), 3)
    assert windows.shape == (5, 3, 16, 16)
    assert np.array_equal(windows[1], normalise(frames[[0, 0, 1]], card.normalisation))
    (ref,) = sess.run(None, {INPUT_NAME: windows})
    np.testing.assert_allclose(np.stack(outs), to_display(ref[:, 0]), rtol=0, atol=2e-6)


def test_engine_refuses_models_without_card_or_not_onnx(build_model, tmp_path):
    with pytest.raises(ModelError, match="no 'livedenoise' metadata"):
        Engine(build_model("bare.onnx", with_card=False), provider="cpu")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a model")
    with pytest.raises(ModelError, match="cannot load model"):
        Engine(junk, provider="cpu")
    with pytest.raises(ModelError, match="not found"):
        Engine(tmp_path / "missing.onnx")


# --------------------------------------------------------------------------- live pipeline


@pytest.mark.parametrize("transport", ["push", "pub"])
def test_every_frame_in_order_and_equal_to_direct_onnxruntime(
    transport, conv_model, write_tiff, frames_u2, replayer, daemon_factory, subscriber
):
    # 60x70 is not a multiple of the model's 8: the engine pads by reflection and crops back
    stack = np.ascontiguousarray(frames_u2[:, :60, :70])
    tiff = write_tiff(stack)
    replay = replayer(path=tiff, fps=300, push=transport == "push", wait_subscriber=5.0)
    daemon = daemon_factory(model=conv_model, source=replay.endpoint, pull=transport == "push", engine=EngineConfig(max_batch=4, provider="cpu", shapes=()))
    sub = subscriber(daemon.publish_address)
    sub.wait_ready()
    replay.start()
    denoised, raw = sub.collect(len(stack), timeout=20)
    replay.join(5)

    assert [m.header["image_id"] for m in denoised] == list(range(len(stack)))
    assert [m.header["image_id"] for m in raw] == list(range(len(stack)))
    assert {m.header["series_id"] for m in denoised} == {1}
    previous = None
    for i, (d, r) in enumerate(zip(denoised, raw, strict=True)):
        assert d.data.shape == (60, 70) and d.data.dtype == np.float32
        assert r.header["dtype"] == "<u2"
        np.testing.assert_array_equal(r.data, stack[i])
        np.testing.assert_allclose(d.data, reference_denoise(conv_model, stack[i]), rtol=0, atol=2e-6)
        if previous is None:
            assert d.header["css"] is None
        else:
            assert d.header["css"] == pytest.approx(css(previous, d.data), abs=1e-9)
        assert 0 <= d.header["latency_ms"] < 5000
        previous = d.data
    stats = sub.stats_until(lambda s: s["denoised"] == len(stack))
    assert stats["received"] == len(stack)
    assert stats["dropped"] == stats["malformed"] == stats["failed"] == 0
    assert stats["provider"] == "CPUExecutionProvider"
    assert stats["model"] == "test-conv"


def test_mixed_frame_sizes_and_dtypes_without_restart(conv_model, detector, daemon_factory, subscriber):
    push, source = detector()
    daemon = daemon_factory(model=conv_model, source=source, pull=True)
    sub = subscriber(daemon.publish_address)
    sub.wait_ready()
    rng = np.random.default_rng(1)
    frames = [
        rng.integers(0, 200, (32, 32)).astype("|u1"),
        rng.integers(0, 900, (128, 128)).astype("<u2"),
        rng.integers(-50, 50, (40, 24)).astype("<i2"),
        rng.integers(0, 10**6, (17, 33)).astype("<u4"),
        rng.normal(5, 2, (64, 48)).astype("<f4"),
    ]
    for i, f in enumerate(frames):
        push.send_multipart(encode_image(f, series_id=7, image_id=i))
    denoised, _ = sub.collect(len(frames))
    push.close()
    assert [d.data.shape for d in denoised] == [f.shape for f in frames]
    for d, f in zip(denoised, frames, strict=True):
        np.testing.assert_allclose(d.data, reference_denoise(conv_model, f), rtol=0, atol=2e-6)


def test_pixel_cap_splits_batches_and_the_warm_up_shape_is_ready(conv_model, detector, daemon_factory, subscriber):
    """--max-batch-pixels reaches the engine: 64x64 frames go two per run, the warm-up ran that
    shape before the first frame, and the output is still frame for frame the model's."""
    push, source = detector()
    daemon = daemon_factory(model=conv_model, source=source, pull=True, queue=QueueConfig(lossless=True), engine=EngineConfig(provider="cpu", max_batch_pixels=2 * 64 * 64, shapes=((64, 64),)))
    engine = daemon.engine
    assert engine.batch_cap((64, 64)) == 2 and engine.config.shapes == ((64, 64),)
    assert engine.warmed and all(shape[0] <= 2 and shape[-2:] == (64, 64) for shape in engine.warmed)
    sub = subscriber(daemon.publish_address)
    sub.wait_ready()
    frames = [np.random.default_rng(i).integers(0, 900, (64, 64)).astype("<u2") for i in range(7)]
    for i, f in enumerate(frames):
        push.send_multipart(encode_image(f, series_id=1, image_id=i))
    denoised, _ = sub.collect(len(frames))
    push.close()
    for d, f in zip(denoised, frames, strict=True):
        np.testing.assert_allclose(d.data, reference_denoise(conv_model, f), rtol=0, atol=2e-6)
    assert {shape[0] for shape in engine.run_shapes if shape[-2:] == (64, 64)} <= {1, 2}


def test_drop_oldest_keeps_latency_bounded(build_model, replayer, daemon_factory, subscriber):
    slow = build_model("slow.onnx", width=32, depth=8)  # ~15 ms per 64x64 frame here
    replay = replayer(synthetic=True, size=64, fps=400, count=600, push=True)
    daemon = daemon_factory(model=slow, source=replay.endpoint, pull=True, engine=EngineConfig(max_batch=1, provider="cpu", shapes=()), queue=QueueConfig(capacity=4, max_wait_ms=0))
    sub = subscriber(daemon.publish_address)
    sub.wait_ready()
    replay.start()
    denoised, _ = sub.collect(600, timeout=20, idle=2.0)
    replay.join(10)
    stats = sub.stats_until(lambda s: s["received"] == 600 and s["queue_depth"] == 0, timeout=10)
    assert stats["dropped"] > 0, stats
    assert stats["received"] == stats["denoised"] + stats["dropped"]
    assert len(denoised) == stats["denoised"]
    ids = [d.header["image_id"] for d in denoised]
    assert ids == sorted(ids)  # dropped, never reordered
    # without dropping, the last frame would wait ~(400 fps * 15 ms - 1) * 1.5 s, seconds
    assert max(d.header["latency_ms"] for d in denoised) < 1000


def test_lossless_drops_nothing(build_model, replayer, daemon_factory, subscriber):
    slow = build_model("slow.onnx", width=32, depth=8)
    n = 150
    replay = replayer(synthetic=True, size=64, fps=1000, count=n, push=True)
    daemon = daemon_factory(model=slow, source=replay.endpoint, queue=QueueConfig(lossless=True, capacity=4), engine=EngineConfig(max_batch=2, provider="cpu", shapes=()))
    assert daemon.config.pull
    sub = subscriber(daemon.publish_address)
    sub.wait_ready()
    replay.start()
    denoised, _ = sub.collect(n, timeout=30)
    replay.join(10)
    assert [d.header["image_id"] for d in denoised] == list(range(n))
    stats = sub.stats_until(lambda s: s["denoised"] == n)
    assert stats["dropped"] == 0 and stats["received"] == n


def _bad_messages() -> list[tuple[str, list[bytes]]]:
    good_header = {"htype": "image", "series_id": 1, "image_id": 0, "shape": [64, 64], "dtype": "<u2"}
    payload = np.zeros((64, 64), "<u2").tobytes()
    nan = np.ones((64, 64), "<f4")
    nan[3, 4] = np.nan
    inf = np.ones((64, 64), "<f4")
    inf[0, 0] = np.inf
    return [
        ("not msgpack", [b"\xc1\xff\x00garbage", payload]),
        ("header not a map", [pack([1, 2, 3]), payload]),
        ("missing image_id", [pack({k: v for k, v in good_header.items() if k != "image_id"}), payload]),
        ("payload too short", [pack(good_header), payload[:-2]]),
        ("unsupported dtype", [pack({**good_header, "dtype": "<f8"}), np.zeros((64, 64)).tobytes()]),
        ("huge shape", [pack({**good_header, "shape": [10**6, 10**6]}), b"\x00" * 16]),
        ("three parts", [pack(good_header), payload, b"extra"]),
        ("unknown htype", [pack({"htype": "bogus", "series_id": 1})]),
        ("NaN pixels", encode_image(nan, series_id=1, image_id=50)),
        ("inf pixels", encode_image(inf, series_id=1, image_id=51)),
    ]


def test_bad_input_is_counted_and_serving_continues(build_model, detector, daemon_factory, subscriber):
    # the model takes 64x64 frames only: a 32x32 frame is "a shape the model can't take"
    model = build_model("fixed.onnx", fixed_hw=(64, 64))
    push, source = detector()
    daemon = daemon_factory(model=model, source=source, pull=True, engine=EngineConfig(max_batch=1, provider="cpu", shapes=()))
    sub = subscriber(daemon.publish_address)
    sub.wait_ready()
    good = np.full((64, 64), 10, "<u2")
    bad = _bad_messages()
    push.send_multipart(encode_start(1))
    push.send_multipart(encode_image(good, series_id=1, image_id=0))
    for _, parts in bad:
        push.send_multipart(parts)
    push.send_multipart(encode_image(np.zeros((32, 32), "<u2"), series_id=1, image_id=60))
    push.send_multipart(encode_image(good, series_id=1, image_id=61))
    push.send_multipart(encode_end(1))
    denoised, _ = sub.collect(2, timeout=10)
    push.close()
    assert [d.header["image_id"] for d in denoised] == [0, 61]
    stats = sub.stats_until(lambda s: s["malformed"] + s["failed"] >= len(bad) - 1 + 1 and s["queue_depth"] == 0)
    # every bad message but "unknown htype" and the NaN/inf frames is rejected on receipt;
    # NaN/inf frames are received, then rejected by the engine: all counted as malformed
    assert stats["malformed"] == len(bad)
    assert stats["failed"] == 1
    assert stats["denoised"] == 2


def test_inference_failure_on_one_batch_is_counted_and_next_is_served(
    build_model, detector, daemon_factory, subscriber
):
    model = build_model("fragile.onnx", fail_above=100.0)  # normalised pixel > 100 -> run-time error
    push, source = detector()
    daemon = daemon_factory(model=model, source=source, pull=True, engine=EngineConfig(max_batch=1, provider="cpu", shapes=()))
    sub = subscriber(daemon.publish_address)
    sub.wait_ready()
    ok = np.full((32, 32), 10, "<u2")
    hot = np.full((32, 32), 60000, "<u2")  # (60000 - 2) * 0.25 > 100
    for i, f in enumerate([ok, hot, ok]):
        push.send_multipart(encode_image(f, series_id=2, image_id=i))
    denoised, _ = sub.collect(2, timeout=10)
    push.close()
    assert [d.header["image_id"] for d in denoised] == [0, 2]
    stats = sub.stats_until(lambda s: s["failed"] == 1 and s["denoised"] == 2)
    assert stats["malformed"] == 0


def test_css_restarts_per_series(conv_model, detector, daemon_factory, subscriber, frames_u2):
    push, source = detector()
    daemon = daemon_factory(model=conv_model, source=source, pull=True)
    sub = subscriber(daemon.publish_address)
    sub.wait_ready()
    for series in (1, 2):
        for i in range(3):
            push.send_multipart(encode_image(frames_u2[i], series_id=series, image_id=i))
    denoised, _ = sub.collect(6)
    push.close()
    assert [d.header["css"] is None for d in denoised] == [True, False, False, True, False, False]


def test_sigterm_drains_the_queue_and_exits_zero(build_model, detector, subscriber, tmp_path):
    slow = build_model("slow.onnx", width=32, depth=8)
    push, source = detector()
    push.setsockopt(zmq.LINGER, 1000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "livedenoise", "serve", "--model", str(slow), "--source", source,
         "--publish", LOOPBACK, "--pull", "--max-batch", "1", "--provider", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        publish, head = read_address(proc.stdout, SERVE_PUBLISH)
        sub = subscriber(publish)
        sub.wait_ready(timeout=30)
        n = 40
        frames = np.random.default_rng(0).integers(0, 100, (n, 64, 64)).astype("<u2")
        for i in range(n):
            push.send_multipart(encode_image(frames[i], series_id=3, image_id=i))
        sub.stats_until(lambda s: s["received"] == n, timeout=10)
        proc.send_signal(signal.SIGTERM)
        denoised, _ = sub.collect(n, timeout=20)
        out, _ = proc.communicate(timeout=20)
        out = head + out
        push.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert [d.header["image_id"] for d in denoised] == list(range(n))
    assert "CPUExecutionProvider" in out  # the provider in use is logged at start


def test_replay_paces_accurately(write_tiff, frames_u2, replayer):
    tiff = write_tiff(frames_u2)
    replay = replayer(path=tiff, fps=100, push=True, loop=True, count=50)
    pull = zmq.Context.instance().socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.connect(replay.endpoint)
    replay.start()
    headers = []
    deadline = time.monotonic() + 10
    while len(headers) < 50 + 10 and time.monotonic() < deadline:  # 50 frames, 5 passes x (start, end)
        if pull.poll(200):
            parts = pull.recv_multipart()
            headers.append(msgpack.unpackb(parts[0]))
    replay.join(5)
    pull.close()
    kinds = [h["htype"] for h in headers]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("start") == kinds.count("end") == 5
    images = [h for h in headers if h["htype"] == "image"]
    assert [h["series_id"] for h in images] == [1] * 12 + [2] * 12 + [3] * 12 + [4] * 12 + [5] * 2
    assert [h["image_id"] for h in images[:13]] == [*list(range(12)), 0]
    assert len(images) == 50
    # pacing measured at the sender (start_time, ns): the receiver may connect a little late
    sent = np.array([h["start_time"] for h in images], np.float64) / 1e9
    assert (len(sent) - 1) / (sent[-1] - sent[0]) == pytest.approx(100, rel=0.02)
    # absolute deadlines: frame i leaves at t0 + i/100; a late frame (a busy CPU) is followed by
    # catch-up, so the schedule never drifts: the typical and the last frame are on time
    deviation = np.abs(sent - sent[0] - np.arange(50) / 100)
    assert np.median(deviation) < 0.005 and deviation[-1] < 0.01


def test_protocol_examples_run_against_a_real_daemon(conv_model, daemon_factory):
    """docs/examples/publisher.py -> serve -> docs/examples/subscriber.py (the README snippets).

    The example detector binds the address on its command line and reports nothing: its address
    is the one chosen before anything binds it (:func:`~livedenoise.testing.free_addr`)."""
    examples = Path(__file__).resolve().parents[2] / "docs" / "examples"
    source = free_addr()
    daemon = daemon_factory(model=conv_model, source=source)
    sub = subprocess.Popen(
        [sys.executable, str(examples / "subscriber.py"), daemon.publish_address, "20"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    time.sleep(0.5)
    pub = subprocess.Popen(
        [sys.executable, str(examples / "publisher.py"), source, "1500"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        out, err = sub.communicate(timeout=60)
    finally:
        for p in (sub, pub):
            if p.poll() is None:
                p.kill()
            p.communicate()
    assert sub.returncode == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 20
    assert all(line.startswith("series 1 image ") and "(128, 128)" in line for line in lines)
    ids = [int(line.split()[3]) for line in lines]
    assert ids == sorted(ids)


def test_live_queue_drops_frames_older_than_max_age_but_keeps_the_newest():
    q = FrameQueue(64, max_age=0.05)
    for i in range(3):
        q.put(i)
    time.sleep(0.08)
    assert q.get_batch(8, 0.0) == [2] and q.dropped == 2
    lossless = FrameQueue(64, lossless=True, max_age=0.01)
    lossless.put(0)
    time.sleep(0.02)
    assert lossless.get_batch(8, 0.0) == [0] and lossless.dropped == 0


def test_second_signal_exits_at_once(build_model, detector, subscriber):
    slow = build_model("slower.onnx", width=48, depth=10)
    push, source = detector()
    proc = subprocess.Popen(
        [sys.executable, "-m", "livedenoise", "serve", "--model", str(slow), "--source", source,
         "--publish", LOOPBACK, "--pull", "--max-batch", "1", "--provider", "cpu", "--max-age-ms", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        publish, _ = read_address(proc.stdout, SERVE_PUBLISH)
        sub = subscriber(publish)
        sub.wait_ready(timeout=30)
        for i in range(60):  # seconds of work for this model
            push.send_multipart(encode_image(np.zeros((256, 256), "<u2"), series_id=1, image_id=i))
        sub.stats_until(lambda s: s["received"] == 60, timeout=10)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
        push.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM
    assert time.monotonic() - t0 < 2.0
    assert sub.last_stats["denoised"] < 60


def test_viewer_launches_only_with_pyqtgraph_and_a_display(monkeypatch):
    import importlib.util

    from livedenoise.cli._serve import launch_viewer
    from livedenoise.viewer import viewer_unavailable_reason

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    if importlib.util.find_spec("pyqtgraph") is not None:
        assert "no display" in viewer_unavailable_reason()
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert "not installed" in viewer_unavailable_reason()
    assert launch_viewer("tcp://127.0.0.1:1") is None
