"""A restarted series resets everything that carries history, on a real daemon over real sockets.

A ``start`` message (even for the series id already running) or a change of series id begins a
new *epoch* (:class:`~livedenoise.daemon.Received`): the first frame after it is published with
``css`` None, and a multi-frame model denoises it exactly as the first frame of a fresh series
(its window does not reach back into the previous run), however the frames were batched.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from livedenoise.daemon import QueueConfig, restarts
from livedenoise.daemon._receive import Received
from livedenoise.engine import INPUT_NAME, EngineConfig, ModelCard, Normalisation, causal_windows, normalise, to_display
from livedenoise.protocol import ImageFrame, encode_end, encode_image, encode_start

CARD_3F = ModelCard(preset="test-3f", normalisation=Normalisation(2.0, 0.1), input_frames=3)


def _frames(seed: int, n: int, shape=(24, 32)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 60, (n, *shape)).astype("<u2")


def _fresh_series(model, frames: np.ndarray, card: ModelCard = CARD_3F) -> np.ndarray:
    """What a multi-frame model gives ``frames`` as a series of their own, from onnxruntime
    directly (the causal window of :func:`causal_windows`, repeating the first frame)."""
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    windows = causal_windows(normalise(frames, card.normalisation), card.input_frames)
    (out,) = sess.run(None, {INPUT_NAME: windows})
    return to_display(out[:, 0])


def _serve(daemon_factory, subscriber, detector, model, **fields):
    push, source = detector()
    daemon = daemon_factory(model=model, source=source, pull=True, **fields)
    sub = subscriber(daemon.publish_address)
    sub.wait_ready()
    return push, sub


def _send(push, series: int, frames: np.ndarray, start: bool = True, first_id: int = 0) -> None:
    if start:
        push.send_multipart(encode_start(series))
    for i, f in enumerate(frames):
        push.send_multipart(encode_image(f, series_id=series, image_id=first_id + i))


# one batch of up to 16 frames: the end of one run and the start of the next are denoised together
ONE_BATCH = {"queue": QueueConfig(lossless=True, capacity=32, max_wait_ms=300.0)}
ENGINE_16 = EngineConfig(provider="cpu", shapes=(), max_batch=16)


def test_same_series_restarted_with_a_start_message_publishes_css_none(
    conv_model, detector, daemon_factory, subscriber
):
    push, sub = _serve(daemon_factory, subscriber, detector, conv_model, engine=ENGINE_16, **ONE_BATCH)
    run = _frames(0, 3)
    _send(push, 1, run)
    push.send_multipart(encode_end(1))
    _send(push, 1, run)  # the same series id again, after a new start
    denoised, _ = sub.collect(6)
    assert [d.header["image_id"] for d in denoised] == [0, 1, 2, 0, 1, 2]
    assert [d.header["css"] is None for d in denoised] == [True, False, False, True, False, False]
    # the rest of the restarted run is CSS against its own frames: the same values as the first run
    assert [d.header["css"] for d in denoised[4:]] == [d.header["css"] for d in denoised[1:3]]


def test_series_id_change_publishes_css_none_even_back_to_an_earlier_id(
    conv_model, detector, daemon_factory, subscriber
):
    push, sub = _serve(daemon_factory, subscriber, detector, conv_model, engine=ENGINE_16, **ONE_BATCH)
    a, b, c = _frames(1, 3), _frames(2, 2), _frames(3, 2)
    _send(push, 5, a, start=False)
    _send(push, 6, b, start=False)
    _send(push, 5, c, start=False, first_id=3)  # back to 5 without a start: still a new run
    denoised, _ = sub.collect(7)
    assert [d.header["series_id"] for d in denoised] == [5, 5, 5, 6, 6, 5, 5]
    assert [d.header["css"] is None for d in denoised] == [True, False, False, True, False, True, False]


def test_multi_frame_model_restarted_series_is_denoised_as_a_fresh_one(
    build_model, detector, daemon_factory, subscriber
):
    model = build_model("threeframe.onnx", card=CARD_3F)
    push, sub = _serve(daemon_factory, subscriber, detector, model, engine=ENGINE_16, **ONE_BATCH)
    first, second = _frames(4, 5), _frames(5, 4)
    _send(push, 1, first)
    _send(push, 1, second)  # restarted with a start message, the same id, likely in the same batch
    denoised, _ = sub.collect(9)
    got = np.stack([d.data for d in denoised])
    np.testing.assert_allclose(got[:5], _fresh_series(model, first), rtol=0, atol=2e-6)
    np.testing.assert_allclose(got[5:], _fresh_series(model, second), rtol=0, atol=2e-6)
    # the test means something: with the first run's frames in its window, the first frame differs
    continued = _fresh_series(model, np.concatenate([first, second]))[5]
    assert np.abs(continued - got[5]).max() > 1e-3


def test_multi_frame_model_series_id_change_starts_afresh(build_model, detector, daemon_factory, subscriber):
    """1 -> 2 -> 1 without start messages: the engine keeps series 1's history while 2 runs, and
    must still not use it when 1 comes back."""
    model = build_model("threeframe.onnx", card=CARD_3F)
    push, sub = _serve(daemon_factory, subscriber, detector, model, engine=ENGINE_16, **ONE_BATCH)
    a, b, c = _frames(6, 3), _frames(7, 2), _frames(8, 3)
    _send(push, 1, a, start=False)
    _send(push, 2, b, start=False)
    _send(push, 1, c, start=False, first_id=3)
    denoised, _ = sub.collect(8)
    got = np.stack([d.data for d in denoised])
    for run, (lo, hi) in ((a, (0, 3)), (b, (3, 5)), (c, (5, 8))):
        np.testing.assert_allclose(got[lo:hi], _fresh_series(model, run), rtol=0, atol=2e-6)


def test_restart_survives_the_first_frame_being_dropped(build_model, detector, daemon_factory, subscriber):
    """Live mode with a one-frame queue and a slow model drops most frames, probably the first of
    the restarted run too: whichever frame of it comes out first still has css None."""
    slow = build_model("slow.onnx", width=32, depth=8)
    push, sub = _serve(
        daemon_factory, subscriber, detector, slow,
        engine=EngineConfig(provider="cpu", shapes=(), max_batch=1),
        queue=QueueConfig(capacity=1, max_wait_ms=0.0, max_age_ms=0.0),
    )
    run = _frames(9, 12, shape=(64, 64))
    _send(push, 3, run)
    _send(push, 3, run, first_id=100)  # restarted, ids 100.. so the two runs can be told apart
    stats = sub.stats_until(lambda s: s["received"] == 24 and s["queue_depth"] == 0, timeout=20)
    denoised, _ = sub.collect(stats["denoised"], timeout=10, idle=2.0)
    second = [d for d in denoised if d.header["image_id"] >= 100]
    assert second, "no frame of the restarted run was published"
    assert second[0].header["css"] is None
    assert all(d.header["css"] is not None for d in second[1:])


@pytest.mark.parametrize(
    ("epochs", "expected"),
    [
        ([(1, 1), (1, 1), (1, 2), (1, 2)], [True, False, True, False]),  # a restart inside a batch
        ([(1, 1), (2, 2), (1, 3)], [True, True, True]),  # every change of series is a new epoch
    ],
)
def test_restarts_flags_the_first_frame_of_each_epoch(epochs, expected):
    seen: dict[int, int] = {}
    batch = [Received(ImageFrame(sid, i, np.zeros((2, 2), "<u2")), 0.0, ep) for i, (sid, ep) in enumerate(epochs)]
    assert restarts(batch, seen) == expected
    assert restarts(batch[-1:], seen) == [False]  # the next batch goes on with the same epoch
