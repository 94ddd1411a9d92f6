"""One failure path for every pipeline thread, and the lossless PUSH output.

A stage is killed by making something its loop calls raise, on a real daemon with real sockets
and a real model: the daemon must stop cleanly (what was recorded stays readable), report the
stage, and end every thread; ``serve`` must exit non-zero with one ``error:`` line. Every wait is
bounded: a watchdog signal ends a ``run()`` that would otherwise never return.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import zmq

from livedenoise.daemon import AtomsConfig, Daemon, Publisher, QueueConfig, RecordingConfig, ServeConfig
from livedenoise.engine import EngineConfig
from livedenoise.errors import PipelineError
from livedenoise.protocol import decode_published, encode_image, encode_start
from livedenoise.recording import iter_frames
from livedenoise.testing import LOOPBACK, reference_denoise

FRAME = np.random.default_rng(7).integers(0, 100, (32, 32)).astype("<u2")


@contextmanager
def watchdog(seconds: float = 60.0):
    """SIGINT to this process after ``seconds``: a ``Daemon.run()`` that missed a failure then
    returns (after a clean stop) instead of hanging, and the test fails on what it expected."""
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


class Feeder(threading.Thread):
    """A detector on its own thread: up to ``n`` frames, never blocking for long (the daemon may be
    gone), until :meth:`halt`."""

    def __init__(self, sock: zmq.Socket, n: int, frame: np.ndarray = FRAME):
        super().__init__(daemon=True)
        self.sock, self.n, self.frame = sock, n, frame
        self.sent = 0
        self._halt = threading.Event()
        sock.setsockopt(zmq.SNDTIMEO, 100)

    def run(self) -> None:
        messages = itertools.chain(
            [encode_start(1)], (encode_image(self.frame, series_id=1, image_id=i) for i in range(self.n))
        )
        message = next(messages)
        while not self._halt.is_set():
            try:
                self.sock.send_multipart(message)
            except zmq.Again:
                continue
            self.sent += 1
            message = next(messages, None)
            if message is None:
                return

    def halt(self) -> None:
        self._halt.set()
        self.join(10)
        assert not self.is_alive()


def fail_after(monkeypatch, obj, name: str, exc: Exception, ready) -> None:
    """Make ``obj.name`` raise ``exc`` once ``ready(calls, items)`` says enough went through it
    (``items``: the frames its results held, a list counting its length, None nothing)."""
    real = getattr(obj, name)
    seen = {"calls": 0, "items": 0}

    def wrapper(*args, **kwargs):
        if ready(seen["calls"], seen["items"]):
            raise exc
        result = real(*args, **kwargs)
        seen["calls"] += 1
        seen["items"] += len(result) if isinstance(result, list) else result is not None
        return result

    monkeypatch.setattr(obj, name, wrapper)


def kill_stage(stage: str, daemon: Daemon, monkeypatch) -> None:
    """Make ``stage``'s loop raise ``RuntimeError("<stage> boom")`` after a few frames went through it."""
    exc = RuntimeError(f"{stage} boom")
    if stage == "receive":  # the receiver tracks every image frame it takes off the socket
        fail_after(monkeypatch, daemon.source, "_track", exc, lambda *_: daemon.stats.denoised >= 5)
    elif stage == "infer":  # the inference loop takes its batches off the queue
        fail_after(monkeypatch, daemon.queue, "get_batch", exc, lambda _, items: items >= 5)
    elif stage == "publish":  # stats go out between batches, outside the per-batch guard
        fail_after(monkeypatch, daemon.publisher, "send_stats", exc, lambda *_: daemon.stats.denoised >= 5)
    elif stage == "record":  # the writer loop takes its frames off its queue
        fail_after(monkeypatch, daemon.recorder, "_get", exc, lambda _, items: items >= 5)
    elif stage == "atoms":  # the finder hands each frame's atoms to the publisher
        fail_after(monkeypatch, daemon.publisher, "post", exc, lambda calls, _: calls >= 3)


def pipeline_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("ld-")}


@pytest.mark.parametrize("stage", ["receive", "infer", "publish", "record", "atoms"])
def test_a_failed_stage_stops_the_daemon_and_run_raises_it(stage, conv_model, detector, tmp_path, monkeypatch):
    before = pipeline_threads()
    push, source = detector()
    daemon = Daemon(ServeConfig(
        model=conv_model, source=source, publish=LOOPBACK, stats_interval=0.1,
        queue=QueueConfig(lossless=True, capacity=4), engine=EngineConfig(provider="cpu", shapes=(), max_batch=2),
        recording=RecordingConfig(tmp_path / "rec", chunk_frames=4), atoms=AtomsConfig(),
    ))
    kill_stage(stage, daemon, monkeypatch)
    feeder = Feeder(push, 200)  # lossless: most of them wait in the detector
    feeder.start()
    try:
        with watchdog(), pytest.raises(PipelineError) as info:
            daemon.run()
    finally:
        feeder.halt()

    error = info.value
    assert str(error) == f"{stage} thread failed: RuntimeError: {stage} boom"
    assert error.stage == stage and error.__cause__ is not None and str(error.__cause__) == f"{stage} boom"
    assert daemon.failure is error
    assert daemon.stop() == 1  # stopped already: says so again
    assert pipeline_threads() <= before  # every thread of this daemon ended
    # the recording holds every frame the recorder took, readable, in order
    ids = [i for _, i, _ in iter_frames(tmp_path / "rec")]
    rec = daemon.recorder.counters()
    assert ids == list(range(len(ids))) and len(ids) == rec["recorded"] and rec["record_errors"] == 0
    published = daemon.stats.denoised
    assert published >= 3
    if stage == "record":  # written before and after the failure (what was queued), or counted
        assert rec["recorded"] + rec["record_overflow"] == published and rec["recorded"] >= 5
    else:
        assert rec["recorded"] == published and rec["record_overflow"] == 0


def test_stop_reports_a_stage_that_failed_while_started(conv_model, detector, daemon_factory, monkeypatch):
    before = pipeline_threads()
    _, source = detector()
    daemon = daemon_factory(model=conv_model, source=source, pull=True)

    def boom() -> None:
        raise OSError("disk\non fire")

    monkeypatch.setattr(daemon.publisher, "send_stats", boom)
    deadline = time.monotonic() + 20
    while daemon.failure is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert str(daemon.failure) == "publish thread failed: OSError: disk on fire"  # one line
    assert daemon.stop(timeout=10) == 1
    assert pipeline_threads() <= before


def test_a_clean_stop_returns_0(conv_model, detector, daemon_factory):
    _, source = detector()
    daemon = daemon_factory(model=conv_model, source=source, pull=True)
    assert daemon.stop(timeout=10) == 0 and daemon.failure is None


def test_serve_exits_non_zero_with_one_error_line(conv_model, detector, monkeypatch, capsys):
    from livedenoise.cli import main

    def boom(self) -> None:
        raise RuntimeError("stats socket\nbroken")

    monkeypatch.setattr(Publisher, "send_stats", boom)  # the first stats message kills the publisher
    _, source = detector()
    monkeypatch.setattr(sys, "argv", [
        "livedenoise", "serve", "--model", str(conv_model), "--source", source, "--pull", "--publish", LOOPBACK,
        "--provider", "cpu", "--warmup-size", "", "--log-level", "ERROR",
    ])
    with watchdog(), pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        "error: publish thread failed: RuntimeError: stats socket broken"
    ]


# --------------------------------------------------------------------------- the PUSH output


def test_push_output_gives_a_slow_consumer_every_frame_in_order(conv_model, detector, daemon_factory, subscriber):
    n = 300
    frame = np.random.default_rng(3).integers(0, 1000, (128, 128)).astype("<u2")  # 64 KiB denoised
    push, source = detector()
    daemon = daemon_factory(
        model=conv_model, source=source, queue=QueueConfig(lossless=True, capacity=4), push_output=LOOPBACK
    )
    assert daemon.push_address.startswith("tcp://127.0.0.1:")
    sub = subscriber(daemon.publish_address, (b"denoised", b"stats"))
    sub.wait_ready()
    pull = zmq.Context.instance().socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.setsockopt(zmq.RCVHWM, 1)
    pull.connect(daemon.push_address)
    got: list = []

    def consume() -> None:  # slower than the daemon: 5 ms per frame
        while len(got) < n and pull.poll(10_000):
            got.append(decode_published(pull.recv_multipart()))
            time.sleep(0.005)

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    feeder = Feeder(push, n, frame)
    feeder.start()
    try:
        on_pub, _ = sub.collect(n, timeout=60, idle=20)
        consumer.join(60)
    finally:
        feeder.halt()
        pull.close()
    assert not consumer.is_alive()
    assert [m.topic for m in got] == [b"denoised"] * n
    assert [m.header["image_id"] for m in got] == list(range(n))
    np.testing.assert_allclose(got[-1].data, reference_denoise(conv_model, frame), rtol=0, atol=2e-6)
    assert [m.header["image_id"] for m in on_pub] == list(range(n))  # the PUB output still works
    assert got[7].header == on_pub[7].header  # the same messages
    stats = sub.stats_until(lambda s: s["pushed"] == n)
    assert stats["push_lost"] == 0 and stats["dropped"] == 0 and stats["denoised"] == n
    assert daemon.stop(timeout=10) == 0


def test_stop_gives_up_on_a_push_consumer_that_takes_nothing(conv_model, detector, daemon_factory, subscriber):
    push, source = detector()
    daemon = daemon_factory(
        model=conv_model, source=source, queue=QueueConfig(lossless=True, capacity=4), push_output=LOOPBACK
    )
    daemon.publisher.push_grace = 0.3
    sub = subscriber(daemon.publish_address, (b"stats",))
    sub.wait_ready()
    for message in [encode_start(1)] + [encode_image(FRAME, series_id=1, image_id=i) for i in range(3)]:
        push.send_multipart(message)
    # nobody pulls: the publisher waits on the first frame, and still sends stats meanwhile
    held = sub.stats_until(lambda s: s["received"] == 3 and s["queue_depth"] == 0)
    assert held["pushed"] == 0 and held["denoised"] == 0
    assert daemon.stop(timeout=10) == 0
    assert (daemon.publisher.pushed, daemon.publisher.push_lost, daemon.stats.denoised) == (0, 3, 3)


def test_a_push_address_in_use_is_one_clear_error(conv_model, detector):
    from livedenoise.errors import LivedenoiseError

    _busy, taken = detector()  # a socket already bound there
    _, source = detector()
    with pytest.raises(LivedenoiseError, match=f"cannot push on '{taken}'"):
        Daemon(ServeConfig(model=conv_model, source=source, publish=LOOPBACK, push_output=taken,
                           engine=EngineConfig(provider="cpu", shapes=())))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="native thread names are set on Linux only")
def test_stage_threads_carry_their_names_into_the_os(conv_model, detector, daemon_factory):
    """``top -H`` and /proc name each stage, so an operator sees which one uses the CPU."""
    _, address = detector()
    daemon = daemon_factory(model=conv_model, source=address, pull=True)
    names = {t.native_id: t.name for t in daemon._threads}

    def comm() -> dict[int, str]:
        return {tid: Path(f"/proc/self/task/{tid}/comm").read_text().strip() for tid in names}

    deadline = time.monotonic() + 5  # each thread names itself as it starts
    while comm() != names and time.monotonic() < deadline:
        time.sleep(0.01)
    assert comm() == names and {"ld-receive", "ld-infer", "ld-publish"} <= set(names.values())
