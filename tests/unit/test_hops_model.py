"""The hop-following model: the motion-aware gate built into ONNX (trainer/gate.py) against its numpy
reference, and the shipped ``hops.onnx`` as lowdose's network behind that gate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from livedenoise.cli._common import model_path
from livedenoise.engine import INPUT_NAME, Engine, ModelCard, causal_windows, default_model_path, normalise
from trainer.gate import GateParams, build_gated_model, gate_graph, gate_reference

MODELS = default_model_path().parent
OFFSET, SCALE = 0.5, 0.62
K = 5


def session(model) -> ort.InferenceSession:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def hop_window(rng: np.random.Generator, dose_peak: float = 12.0, size: int = 32) -> tuple[np.ndarray, tuple, tuple]:
    """A normalised 5-frame window (1, K, size, size) of Poisson counts plus read noise: a static atom,
    and one that hopped from ``old`` to ``new`` two frames before the end (frames 3 and 4 at ``new``)."""
    yy, xx = np.mgrid[:size, :size].astype(np.float64)

    def atom(x: float, y: float) -> np.ndarray:
        return dose_peak * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 0.875**2))

    old, new, static = (10.0, 12.0), (15.0, 12.0), (24.0, 24.0)
    lam = np.empty((K, size, size))
    for t in range(K):
        lam[t] = 0.6 + atom(*static) + atom(*(new if t >= 3 else old))
    counts = rng.poisson(lam) + rng.normal(0, 0.25, lam.shape)
    return ((counts - OFFSET) * SCALE)[None].astype(np.float32), old, new


@pytest.mark.parametrize("p", [GateParams(sigma=1.0, threshold=2.75),
                               GateParams(sigma=1.25, threshold=2.5, threshold_newest=3.0, max_new=3)])
def test_gate_graph_equals_numpy_reference_and_follows_a_hop(p: GateParams):
    rng = np.random.default_rng(3)
    model = gate_graph(K, OFFSET, SCALE, p)
    onnx.checker.check_model(model, full_check=True)
    win, old, new = hop_window(rng)
    batch = np.concatenate([win, hop_window(rng)[0]])  # N = 2, two noise draws
    got = session(model).run(None, {"window": batch})[0]
    ref = gate_reference(batch, OFFSET, SCALE, p)
    assert got.shape == ref.shape == (2, 1, 32, 32)
    np.testing.assert_allclose(got, ref, atol=1e-5)

    plain = batch.mean(axis=1, keepdims=True)
    recent = batch[:, 3:].mean(axis=1, keepdims=True)
    for x, y in (old, new):  # at both sites the gate takes the frames since the hop, not the window mean
        sl = (slice(None), 0, int(y), int(x))
        np.testing.assert_allclose(got[sl], recent[sl], atol=1e-5)
        assert not np.allclose(got[sl], plain[sl], atol=1e-3)
    # the static atom and most of the background keep the plain 5-frame mean
    assert np.allclose(got[:, 0, 22:27, 22:27], plain[:, 0, 22:27, 22:27], atol=1e-5)
    assert np.isclose(got, plain, atol=1e-5).mean() > 0.8


def test_shipped_hops_model_is_lowdose_behind_the_gate_and_rebuilds_identically():
    base = onnx.load(str(MODELS / "lowdose.onnx"))
    shipped = onnx.load(str(MODELS / "hops.onnx"))
    card = ModelCard.from_metadata({p.key: p.value for p in shipped.metadata_props})
    gate = dict(card.training["gate"])
    note = gate.pop("note")
    gate.pop("base_preset")
    p = GateParams(**gate)
    assert card.input_frames == K and card.normalisation.flatten_sigma is None
    # reproducible: building from lowdose with the card's parameters gives the shipped graph
    rebuilt = build_gated_model(base, p, note)
    assert rebuilt.graph.SerializeToString() == shipped.graph.SerializeToString()

    rng = np.random.default_rng(5)
    counts = np.stack([rng.poisson(0.6, (K, 32, 32)) + 0.0 for _ in range(2)])
    yy, xx = np.mgrid[:32, :32]
    counts[:, :3] += rng.poisson(6.0 * np.exp(-((xx - 9) ** 2 + (yy - 9) ** 2) / 1.5), (2, 3, 32, 32))
    counts[:, 3:] += rng.poisson(6.0 * np.exp(-((xx - 14) ** 2 + (yy - 9) ** 2) / 1.5), (2, 2, 32, 32))
    x = normalise(counts, card.normalisation)
    out = session(MODELS / "hops.onnx").run(None, {INPUT_NAME: x})[0]
    gated = gate_reference(x, card.normalisation.offset, card.normalisation.scale, p).astype(np.float32)
    want = session(MODELS / "lowdose.onnx").run(None, {INPUT_NAME: np.repeat(gated, K, axis=1)})[0]
    np.testing.assert_allclose(out, want, atol=1e-4)
    plain = session(MODELS / "lowdose.onnx").run(None, {INPUT_NAME: x})[0]
    assert np.abs(out - plain).max() > 0.05  # the gate changed what the network saw


def test_engine_runs_the_shipped_hops_model_by_name_with_its_causal_history():
    path = model_path(Path("hops"))
    assert path == MODELS / "hops.onnx"
    engine = Engine(path, provider="cpu", max_batch=4)
    rng = np.random.default_rng(11)
    frames = [rng.poisson(0.6, (24, 24)).astype(np.float32) for _ in range(6)]  # 24: padded to 24, a multiple of 8
    res = engine.infer(frames, series=[1] * 6)
    assert not res.errors
    card = engine.card
    x = normalise(np.stack(frames), card.normalisation)
    want = session(path).run(None, {INPUT_NAME: causal_windows(x, K)})[0]
    np.testing.assert_allclose(np.stack(res.outputs), (want[:, 0] + 1) / 2, atol=1e-4)


def test_gate_refuses_a_single_frame_model():
    with pytest.raises(ValueError, match="multi-frame"):
        build_gated_model(onnx.load(str(MODELS / "default.onnx")), GateParams())
    with pytest.raises(ValueError, match="out of range"):
        GateParams(sigma=0)
