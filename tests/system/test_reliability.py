"""Faults the daemon survives, and crash-safe recording (issue 7).

Real sockets on 127.0.0.1, real onnxruntime sessions, real `python -m livedenoise serve`
processes for signals and kill -9. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from livedenoise.daemon import Delivered, QueueConfig, RecordingConfig
from livedenoise.engine import EngineConfig
from livedenoise.protocol import Limits, encode_image, encode_start
from livedenoise.recording import INDEX, Recorder, iter_frames, read_index, summarize
from livedenoise.testing import LOOPBACK, SERVE_PUBLISH, read_address, reference_denoise

CTX = zmq.Context.instance()


def serve_cmd(model: Path, source: str, publish: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "livedenoise", "serve", "--model", str(model), "--source", source,
            "--publish", publish, "--provider", "cpu", "--warmup-size", "", *extra]


def finish(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.kill()
    out, _ = proc.communicate(timeout=10)
    return out or ""


# --------------------------------------------------------------------------- recorder


def delivered(series_id: int, image_id: int, rng) -> Delivered:
    raw = rng.integers(0, 1000, (24, 20)).astype("<u2")
    return Delivered(series_id, image_id, raw, rng.random((24, 20), dtype=np.float32), None, 1.0)


def test_recorder_chunks_round_trip_and_inspect(tmp_path):
    rng = np.random.default_rng(0)
    frames = [delivered(1, i, rng) for i in range(130)] + [delivered(2, i, rng) for i in (0, 1, 2, 5, 6, 9)]
    rec = Recorder(RecordingConfig(tmp_path / "rec", raw=True, chunk_frames=50, chunk_seconds=60))
    rec.start()
    for d in frames:
        rec.submit(d)
    rec.close()
    assert rec.counters() == {
        "recorded": 136, "recorded_raw": 136, "record_overflow": 0, "record_errors": 0, "record_queue": 0
    }
    got = list(iter_frames(tmp_path / "rec"))
    raw = list(iter_frames(tmp_path / "rec", kind="raw"))
    assert [(s, i) for s, i, _ in got] == [(d.series_id, d.image_id) for d in frames]
    for (_, _, den), (_, _, r), d in zip(got, raw, frames, strict=True):
        np.testing.assert_array_equal(den, d.denoised)
        np.testing.assert_array_equal(r, d.raw)
        assert r.dtype == np.dtype("<u2") and den.dtype == np.float32
    # 130 frames of series 1 in chunks of 50 -> 3 chunks per kind; series 2 -> 1
    assert len(read_index(tmp_path / "rec")) == 2 * (3 + 1)
    s2 = next(s for s in summarize(tmp_path / "rec") if s.series_id == 2 and s.kind == "denoised")
    assert (s2.frames, s2.first_id, s2.last_id, s2.missing, s2.gaps) == (6, 0, 9, 4, [(3, 4), (7, 8)])
    assert not list((tmp_path / "rec").rglob("*.part"))

    out = subprocess.run([sys.executable, "-m", "livedenoise", "inspect", str(tmp_path / "rec")],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "140"})
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if "denoised" in line or "raw" in line]
    assert len(lines) == 4
    assert any("130" in line and "denoised" in line for line in lines)
    assert any("3-4, 7-8" in line for line in lines)

    (tmp_path / "plain").mkdir()
    bad = subprocess.run([sys.executable, "-m", "livedenoise", "inspect", str(tmp_path / "plain")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    message = f"error: {tmp_path / 'plain'} is not a livedenoise recording (no valid RECORDING.json)"
    assert bad.stderr.strip().splitlines() == [message]


def test_recorder_closes_chunks_on_time_and_counts_overflow(tmp_path):
    rng = np.random.default_rng(1)
    rec = Recorder(RecordingConfig(tmp_path / "slow", chunk_frames=1000, chunk_seconds=0.2))
    rec.start()
    rec.submit(delivered(3, 0, rng))
    deadline = time.monotonic() + 5
    while rec.recorded == 0 and time.monotonic() < deadline:  # a lone frame becomes durable
        time.sleep(0.02)
    assert rec.recorded == 1 and len(read_index(tmp_path / "slow")) == 1
    rec.close()

    live = Recorder(RecordingConfig(tmp_path / "live"), queue_size=2)  # thread not started: the queue fills
    for i in range(5):
        live.submit(delivered(1, i, rng))
    assert live.overflow == 3
    live.close()


def test_lossless_recorder_holds_the_producer_back_instead_of_dropping(tmp_path):
    rng = np.random.default_rng(6)
    rec = Recorder(RecordingConfig(tmp_path / "rec"), lossless=True, queue_size=2)
    frames = [delivered(4, i, rng) for i in range(6)]
    producer = threading.Thread(target=lambda: [rec.submit(d) for d in frames], daemon=True)
    producer.start()
    producer.join(0.3)
    assert producer.is_alive() and len(rec._items) == 2  # blocked: the writer has not started
    rec.start()
    producer.join(10)
    assert not producer.is_alive()
    rec.close()
    assert rec.overflow == 0 and rec.recorded == 6
    assert [i for _, i, _ in iter_frames(tmp_path / "rec")] == list(range(6))


def test_lossless_daemon_records_every_frame(conv_model, replayer, daemon_factory, subscriber, tmp_path):
    n = 120
    replay = replayer(synthetic=True, size=32, fps=2000, count=n, push=True)
    daemon = daemon_factory(model=conv_model, source=replay.endpoint, queue=QueueConfig(lossless=True), recording=RecordingConfig(tmp_path / "rec", raw=True, chunk_frames=16))
    sub = subscriber(daemon.publish_address, (b"stats",))
    sub.wait_ready()
    replay.start()
    replay.join(20)
    stats = sub.stats_until(lambda s: s["denoised"] == n, timeout=20)
    daemon.stop(timeout=10)
    assert stats["dropped"] == 0
    den = list(iter_frames(tmp_path / "rec"))
    raw = list(iter_frames(tmp_path / "rec", kind="raw"))
    assert [i for _, i, _ in den] == [i for _, i, _ in raw] == list(range(n))
    for (_, _, d), (_, _, r) in list(zip(den, raw, strict=True))[::40]:
        np.testing.assert_allclose(d, reference_denoise(conv_model, r), rtol=0, atol=2e-6)
    assert daemon.recorder.counters()["recorded"] == n


# --------------------------------------------------------------------------- detector faults


def test_detector_restart_new_series_resumes_within_a_second(conv_model, detector, daemon_factory, subscriber):
    pub, source = detector(zmq.PUB)
    daemon = daemon_factory(model=conv_model, source=source)  # SUB: the detector binds PUB
    sub = subscriber(daemon.publish_address, (b"denoised",))
    frame = np.random.default_rng(2).integers(0, 100, (32, 32)).astype("<u2")

    def pump(pub: zmq.Socket, series: int, want: int, timeout: float) -> list:
        """Send frames of ``series`` at ~100 fps until ``want`` of them were denoised."""
        got, image_id = [], 0
        deadline = time.monotonic() + timeout
        while len(got) < want and time.monotonic() < deadline:
            pub.send_multipart(encode_image(frame, series_id=series, image_id=image_id))
            image_id += 1
            msg = sub.recv(0.01)
            while msg is not None:
                if msg.header["series_id"] == series:
                    got.append((time.monotonic(), msg))
                msg = sub.recv(0)
        return got

    first = pump(pub, 1, 5, timeout=10)
    assert len(first) >= 5
    pub.close()  # the detector process dies ...
    time.sleep(0.3)
    pub, _ = detector(zmq.PUB, source)  # ... and restarts on its address: a new series, ids from 0
    t0 = time.monotonic()
    second = pump(pub, 2, 3, timeout=5)
    pub.close()
    assert len(second) >= 3
    assert second[0][0] - t0 < 1.0  # serving resumed within a second of the restart
    assert second[0][1].header["css"] is None  # CSS restarts with the series
    assert all(m.header["css"] is not None for _, m in second[1:])
    assert daemon.stats.snapshot()["failed"] == 0


def test_detector_disappears_and_comes_back(conv_model, detector, daemon_factory, subscriber):
    push, source = detector()
    daemon = daemon_factory(model=conv_model, source=source, pull=True)
    sub = subscriber(daemon.publish_address)
    sub.wait_ready()
    frames = np.random.default_rng(3).integers(0, 100, (20, 32, 32)).astype("<u2")
    for i in range(10):
        push.send_multipart(encode_image(frames[i], series_id=5, image_id=i))
    before, _ = sub.collect(10, timeout=10)
    push.close()  # gone: the daemon keeps publishing stats while it waits
    up = sub.stats_until(lambda s: True)["uptime_s"]
    assert sub.stats_until(lambda s: s["uptime_s"] > up + 1.0, timeout=5)["received"] == 10
    push, _ = detector(address=source)  # back on its address, same series
    for i in range(10, 20):
        push.send_multipart(encode_image(frames[i], series_id=5, image_id=i))
    after, _ = sub.collect(10, timeout=10)
    push.close()
    assert [m.header["image_id"] for m in before + after] == list(range(20))
    stats = sub.stats_until(lambda s: s["denoised"] == 20)
    assert stats["gaps"] == stats["failed"] == stats["malformed"] == 0


SLOW_THEN_GONE = """
import sys, zmq
s = zmq.Context().socket(zmq.SUB)
s.setsockopt(zmq.SUBSCRIBE, b"")
s.connect(sys.argv[1])
s.recv_multipart()
print("ready", flush=True)
import time; time.sleep(60)   # never reads again, until killed
"""


def test_slow_and_vanishing_subscribers_do_not_affect_the_daemon(
    conv_model, replayer, daemon_factory, subscriber
):
    n = 600
    replay = replayer(synthetic=True, size=64, fps=1500, count=n, push=True)
    daemon = daemon_factory(model=conv_model, source=replay.endpoint, queue=QueueConfig(lossless=True))
    good = subscriber(daemon.publish_address)
    good.wait_ready()
    slow = CTX.socket(zmq.SUB)  # subscribed to everything, never reads
    slow.setsockopt(zmq.LINGER, 0)
    slow.setsockopt(zmq.RCVHWM, 1)
    slow.setsockopt(zmq.SUBSCRIBE, b"")
    slow.connect(daemon.publish_address)
    gone = subprocess.Popen([sys.executable, "-c", SLOW_THEN_GONE, daemon.publish_address],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert gone.stdout.readline().strip() == "ready"
        replay.start()
        half, _ = good.collect(n // 2, timeout=20)
        gone.kill()  # vanishes mid-stream (connection reset)
        rest, _ = good.collect(n - len(half), timeout=20)
        replay.join(10)
    finally:
        finish(gone)
        slow.close()
    assert [m.header["image_id"] for m in half + rest] == list(range(n))
    stats = good.stats_until(lambda s: s["denoised"] == n)
    assert stats["dropped"] == stats["failed"] == 0


def test_failed_batch_is_counted_and_the_next_batch_is_served(build_model, detector, daemon_factory, subscriber):
    model = build_model("fragile.onnx", fail_above=100.0)
    push, source = detector()
    # a whole batch of 4 in one run: the long max wait makes the 4 frames sent together one batch
    daemon = daemon_factory(model=model, source=source, queue=QueueConfig(lossless=True, max_wait_ms=2000), engine=EngineConfig(max_batch=4, provider="cpu", shapes=()))
    sub = subscriber(daemon.publish_address)
    sub.wait_ready()
    ok, hot = np.full((32, 32), 10, "<u2"), np.full((32, 32), 60000, "<u2")
    groups = [[ok] * 4, [ok, hot, ok, ok], [ok] * 4]
    got = []
    for g, frames in enumerate(groups):
        for j, f in enumerate(frames):
            push.send_multipart(encode_image(f, series_id=1, image_id=4 * g + j))
        if g == 1:
            sub.stats_until(lambda s: s["failed"] == 4, timeout=10)
        else:
            got += sub.collect(4, timeout=10)[0]
    push.close()
    assert [m.header["image_id"] for m in got] == [0, 1, 2, 3, 8, 9, 10, 11]
    stats = sub.stats_until(lambda s: s["denoised"] == 8)
    assert stats["failed"] == 4 and stats["malformed"] == 0


def test_oversized_part_is_never_allocated_and_serving_resumes(conv_model, detector, daemon_factory, subscriber):
    limits = Limits(max_header_bytes=1024, max_side=64, max_pixels=64 * 64)  # largest part: 16 KiB
    push, source = detector()
    daemon = daemon_factory(model=conv_model, source=source, pull=True, limits=limits)
    assert daemon.source.socket.getsockopt(zmq.MAXMSGSIZE) == 64 * 64 * 4
    sub = subscriber(daemon.publish_address, (b"denoised",))
    frame = np.zeros((64, 64), "<u2")
    push.send_multipart(encode_image(frame, series_id=1, image_id=0))
    assert sub.recv(10).header["image_id"] == 0
    push.send_multipart([b"\x80", b"\x00" * (1 << 20)])  # 1 MiB part: libzmq drops the connection
    image_id, seen = 1, None
    deadline = time.monotonic() + 10
    while seen is None and time.monotonic() < deadline:  # the daemon reconnects by itself
        if push.poll(50, zmq.POLLOUT):
            push.send_multipart(encode_image(frame, series_id=1, image_id=image_id), zmq.NOBLOCK)
            image_id += 1
        seen = sub.recv(0.05)
    push.close()
    assert seen is not None and seen.header["image_id"] >= 1
    stats = daemon.stats.snapshot()
    assert stats["malformed"] == 0  # never reached the application
    assert stats["disconnects"] >= 1  # libzmq dropped the connection; the receiver reconnected


# --------------------------------------------------------------------------- signals and kill -9


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_closes_recording_and_exits_zero(signum, build_model, detector, subscriber, tmp_path):
    slow = build_model("slow.onnx", width=16, depth=6)
    push, source = detector()
    proc = subprocess.Popen(
        serve_cmd(slow, source, LOOPBACK, "--pull", "--max-batch", "1", "--record", str(tmp_path / "rec"),
                  "--record-chunk", "1000", "--max-age-ms", "0"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        publish, head = read_address(proc.stdout, SERVE_PUBLISH)
        sub = subscriber(publish)
        sub.wait_ready(timeout=30)
        n = 40
        frames = np.random.default_rng(4).integers(0, 100, (n, 64, 64)).astype("<u2")
        for i in range(n):
            push.send_multipart(encode_image(frames[i], series_id=3, image_id=i))
        sub.stats_until(lambda s: s["received"] == n, timeout=10)
        proc.send_signal(signum)
        denoised, _ = sub.collect(n, timeout=20)
        last = sub.stats_until(lambda s: s["denoised"] == n and s["recorded"] == n, timeout=20)
        out, _ = proc.communicate(timeout=20)
        out = head + out
        push.close()
    finally:
        if proc.poll() is None:
            finish(proc)
    assert proc.returncode == 0, out
    assert [d.header["image_id"] for d in denoised] == list(range(n))
    assert last["received"] == n
    assert [i for _, i, _ in iter_frames(tmp_path / "rec")] == list(range(n))


def test_second_sigint_exits_at_once(build_model, detector, subscriber):
    slow = build_model("slower.onnx", width=48, depth=10)
    push, source = detector()
    proc = subprocess.Popen(serve_cmd(slow, source, LOOPBACK, "--pull", "--max-batch", "1", "--max-age-ms", "0"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        publish, _ = read_address(proc.stdout, SERVE_PUBLISH)
        sub = subscriber(publish, (b"stats",))
        sub.wait_ready(timeout=30)
        for i in range(60):
            push.send_multipart(encode_image(np.zeros((256, 256), "<u2"), series_id=1, image_id=i))
        sub.stats_until(lambda s: s["received"] == 60, timeout=10)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
        elapsed = time.monotonic() - t0
        push.close()
    finally:
        finish(proc)
    assert proc.returncode == 128 + signal.SIGINT
    assert elapsed < 2.0
    assert sub.last_stats["denoised"] < 60


def test_kill_9_while_recording_loses_no_reported_frame(conv_model, detector, subscriber, tmp_path):
    push, source = detector()  # bound here; only the feeder thread sends on it
    rec = tmp_path / "rec"
    proc = subprocess.Popen(
        serve_cmd(conv_model, source, LOOPBACK, "--lossless", "--record", str(rec), "--record-raw",
                  "--record-chunk", "7"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    stop = threading.Event()
    frames = np.random.default_rng(5).integers(0, 200, (16, 48, 48)).astype("<u2")

    def feed():
        push.send_multipart(encode_start(9))
        i = 0
        while not stop.is_set():
            if push.poll(50, zmq.POLLOUT):
                push.send_multipart(encode_image(frames[i % 16], series_id=9, image_id=i), zmq.NOBLOCK)
                i += 1
        push.close()

    feeder = threading.Thread(target=feed, daemon=True)
    try:
        publish, _ = read_address(proc.stdout, SERVE_PUBLISH)
        sub = subscriber(publish, (b"stats",))
        sub.wait_ready(timeout=30)
        feeder.start()
        reported = sub.stats_until(lambda s: s["recorded"] >= 60, timeout=20)["recorded"]
        proc.send_signal(signal.SIGKILL)  # while frames are flowing and chunks being written
        proc.wait(timeout=10)
    finally:
        stop.set()
        feeder.join(5)
        finish(proc)
    index = read_index(rec)
    recorded = list(iter_frames(rec))  # every indexed chunk is complete and readable
    raw = {i: f for _, i, f in iter_frames(rec, kind="raw")}
    assert len(recorded) >= reported >= 60
    assert [i for _, i, _ in recorded] == list(range(len(recorded)))  # lossless: no gap
    # raw and denoised chunks close one after the other: raw may lag by at most one chunk
    assert set(raw) <= {i for _, i, _ in recorded} and len(raw) >= len(recorded) - 7
    for _, i, f in recorded[:: max(1, len(recorded) // 5)]:
        if i in raw:
            np.testing.assert_array_equal(raw[i], frames[i % 16])
        np.testing.assert_allclose(f, reference_denoise(conv_model, frames[i % 16]), rtol=0, atol=2e-6)
    assert all(len(e.image_ids) <= 7 for e in index)
    lines = (rec / INDEX).read_text().splitlines()
    assert all(json.loads(line)["file"].endswith(".tif") for line in lines if line.endswith("}"))


BACKLOG = """
import numpy as np
from livedenoise.daemon._memory import HeapTrimmer, rss_bytes

frames, pins = [], []
for _ in range(3000):  # a backlog of 3,000 128² float32 frames (64 KiB: in the heap, below the mmap threshold)
    frames.append(np.ones(16384, np.float32))
    pins.append(np.ones(64))  # small and long-lived, allocated meanwhile: each pins the heap above a frame
held = rss_bytes()
del frames  # the backlog drains
drained = rss_bytes()
trimmer = HeapTrimmer(interval=10.0)
released = trimmer.trim()
print(held >> 20, drained >> 20, rss_bytes() >> 20, released >> 20, trimmer.counters()["heap_released_mib"])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_a_drained_backlog_goes_back_to_the_os():
    """Why serve trims: freed frames stay in RSS (the heap is pinned), until malloc_trim gives them back."""
    out = subprocess.run([sys.executable, "-c", BACKLOG], capture_output=True, text=True, timeout=60, check=True)
    held, drained, trimmed, released, counted = (float(v) for v in out.stdout.split())
    backlog = 3000 * 64 / 1024  # MiB
    assert drained > held - backlog / 4, "without a trim the freed backlog stays resident"
    assert released > 0.75 * backlog and trimmed < drained - 0.75 * backlog
    assert counted == pytest.approx(released, abs=1)


def test_serve_refuses_a_negative_trim_interval(conv_model):
    out = subprocess.run(
        serve_cmd(conv_model, "tcp://127.0.0.1:1", "tcp://127.0.0.1:*", "--trim-interval", "-1"),
        capture_output=True, text=True, timeout=60,
    )
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert out.returncode != 0 and len(lines) == 1 and "trim interval" in lines[0], lines
