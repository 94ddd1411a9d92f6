"""The engine and the daemon on a real GPU: onnxruntime's CUDA provider, its IOBinding, CUDA graphs
and the float16 conversion, against the CPU provider on the same shipped models.

Skipped where onnxruntime cannot make a CUDA session (CI has no GPU: onnxruntime-gpu lists the
CUDA provider there too, so the check is a real session's ``get_providers()``). On a GPU machine::

    python -m pytest -q tests/test_gpu.py
"""

from __future__ import annotations

import numpy as np
import pytest

from livedenoise.daemon import QueueConfig
from livedenoise.engine import CPU, CUDA, Engine, EngineConfig, default_model_path
from livedenoise.sim import SimConfig, simulate_movie


def _cuda_session() -> bool:
    try:
        import onnxruntime as ort

        if CUDA not in ort.get_available_providers():
            return False
        session = ort.InferenceSession(str(default_model_path()), providers=[CUDA, CPU])
        return session.get_providers()[0] == CUDA
    except Exception:  # noqa: BLE001 - any failure means: no usable GPU here
        return False


pytestmark = pytest.mark.skipif(not _cuda_session(), reason="no CUDA session in this onnxruntime / machine")

# TF32 convolutions (onnxruntime's CUDA default on Ampere and later) round to a 10-bit mantissa.
ATOL = 5e-3


@pytest.fixture(scope="module")
def frames() -> dict[str, list[np.ndarray]]:
    sq = simulate_movie(SimConfig(frames=7, size=128, seed=11)).noisy
    big = simulate_movie(SimConfig(frames=2, size=512, seed=12)).noisy
    odd = [f[:100, :72] for f in simulate_movie(SimConfig(frames=3, size=128, seed=13)).noisy]
    return {"128": list(sq), "512": list(big), "odd": odd}


def _cpu(model, frames):
    return Engine(model, provider="cpu").infer(frames).outputs


@pytest.mark.parametrize("name", ["default", "rt"])
def test_cuda_provider_matches_cpu(name, frames):
    model = default_model_path().with_name(f"{name}.onnx")
    engine = Engine(model, provider="cuda", max_batch=4)
    assert engine.provider == CUDA and engine.providers[0] == CUDA
    for key, batch in frames.items():
        got = engine.infer(batch)
        assert not got.errors
        for g, ref in zip(got.outputs, _cpu(model, batch), strict=True):
            assert g.shape == ref.shape and g.dtype == np.float32
            np.testing.assert_allclose(g, ref, rtol=0, atol=ATOL, err_msg=f"{name} {key}")


def test_cuda_graph_pads_partial_batches_and_runs_other_shapes_without_graph(frames):
    model = default_model_path()
    engine = Engine(model, EngineConfig(provider="cuda", cuda_graph=True, shapes=((128, 128),), max_batch=4))
    engine.warm_up((128, 128))
    batch = frames["128"]
    ref = _cpu(model, batch + frames["odd"])
    outs = []
    for group in (batch[:4], batch[4:7], batch[:1]):  # full, partial (padded to 4), single
        res = engine.infer(group)
        assert not res.errors
        outs += res.outputs
    for g, r in zip(outs[:7], ref[:7], strict=True):
        np.testing.assert_allclose(g, r, rtol=0, atol=ATOL)
    np.testing.assert_allclose(outs[7], ref[0], rtol=0, atol=ATOL)
    odd = engine.infer(frames["odd"])  # a shape without a captured graph
    for g, r in zip(odd.outputs, ref[7:], strict=True):
        np.testing.assert_allclose(g, r, rtol=0, atol=ATOL)


def test_fp16_is_checked_at_load_and_stays_within_its_tolerance(frames):
    model = default_model_path()
    engine = Engine(model, EngineConfig(provider="cuda", fp16=True))
    assert engine.precision == "fp16"
    assert 0 < engine.fp16_max_abs_diff <= engine.config.fp16_tolerance
    batch = frames["128"]
    for g, r in zip(engine.infer(batch).outputs, _cpu(model, batch), strict=True):
        assert np.abs(g - r).max() <= 2 * engine.config.fp16_tolerance


def test_daemon_serves_every_frame_on_the_gpu(write_tiff, replayer, daemon_factory, subscriber):
    stack = simulate_movie(SimConfig(frames=24, size=128, seed=21)).noisy
    model = default_model_path()
    replay = replayer(path=write_tiff(stack), fps=500, push=True, wait_subscriber=5.0)
    daemon = daemon_factory(model=model, source=replay.endpoint, pull=True, engine=EngineConfig(provider="cuda", max_batch=8, shapes=()), queue=QueueConfig(lossless=True))
    sub = subscriber(daemon.publish_address)
    sub.wait_ready()
    replay.start()
    denoised, _raw = sub.collect(len(stack), timeout=30)
    replay.join(5)
    assert [m.header["image_id"] for m in denoised] == list(range(len(stack)))
    for m, ref in zip(denoised, _cpu(model, list(stack)), strict=True):
        np.testing.assert_allclose(m.data, ref, rtol=0, atol=ATOL)
    stats = sub.stats_until(lambda s: s["denoised"] == len(stack))
    assert stats["provider"] == CUDA
    assert stats["dropped"] == stats["malformed"] == stats["failed"] == 0
