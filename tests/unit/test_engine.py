"""The inference engine's session set-up: warm-up, memory options, graph rewrite, precision checks,
provider reporting. Real onnxruntime sessions on real ONNX files written here or by the
livedenoise.testing plugin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from livedenoise.engine import (
    CPU,
    CUDA,
    INPUT_NAME,
    METADATA_KEY,
    OUTPUT_NAME,
    TENSORRT,
    Engine,
    EngineConfig,
    ModelCard,
    provider_list,
    rewrite_transposed_convs,
)
from livedenoise.engine._providers import trt_profiles
from livedenoise.engine._transforms import max_display_diff, validation_batch
from livedenoise.errors import LivedenoiseError
from livedenoise.testing import DEFAULT_NORM, reference_denoise


def build_transposed_model(path: Path, *, conv: str = "valid", overflow: bool = False, seed: int = 0) -> Path:
    """A small model in the paper's style: valid ``ConvTranspose`` k then valid ``Conv`` k pairs
    (size kept), one with pads 1, a stride-2 ``ConvTranspose`` + stride-2 ``Conv`` round trip, tanh.

    ``overflow``: large weights and a difference of large neighbours at the end, where float16
    (range 65504, 11-bit mantissa) loses what float32 keeps: fp16 must be refused on it.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def init(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def w(shape, scale=None):
        fan_in = np.prod(shape[1:]) if scale is None else 1
        return rng.normal(0, 1 / np.sqrt(fan_in) if scale is None else scale, shape)

    x = INPUT_NAME
    # valid ConvTranspose 3 (H -> H + 2), valid Conv 3 (-> H); 1 -> 4 channels
    nodes.append(helper.make_node("ConvTranspose", [x, init("t0", w((1, 4, 3, 3))), init("tb0", w((4,), 0.1))], ["a0"]))
    nodes.append(helper.make_node("Conv", [x := "a0", init("c0", w((4, 4, 3, 3))), init("cb0", w((4,), 0.1))], ["a1"]))
    # ConvTranspose 5 with pads 1 (H -> H + 2), Conv 3 valid (-> H); rectangular kernel next
    nodes.append(helper.make_node("ConvTranspose", ["a1", init("t1", w((4, 3, 5, 5)))], ["a2"], pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Conv", ["a2", init("c1", w((3, 3, 3, 3)))], ["a3"]))
    nodes.append(helper.make_node("ConvTranspose", ["a3", init("t2", w((3, 2, 3, 1)))], ["a4"]))  # H+2, W
    nodes.append(helper.make_node("Conv", ["a4", init("c2", w((2, 2, 3, 1)))], ["a5"]))
    # down by 2 and up by 2: a stride-2 ConvTranspose, which is not rewritten
    half = {"strides": [2, 2], "pads": [1, 1, 1, 1]}
    nodes.append(helper.make_node("Conv", ["a5", init("d0", w((2, 2, 3, 3)))], ["a6"], **half))
    nodes.append(helper.make_node("ConvTranspose", ["a6", init("u0", w((2, 2, 4, 4)))], ["a7"], **half))
    last = "a7"
    if overflow:
        big = np.zeros((1, 2, 3, 3), np.float32)
        big[0, :, 1, 1] = 3e3  # ~3e3 * activations(~1) * ... > 65504 in fp16 after the next conv
        nodes.append(helper.make_node("Conv", [last, init("o0", big)], ["b0"], pads=[1, 1, 1, 1]))
        diff = np.zeros((1, 1, 1, 2), np.float32)
        diff[0, 0, 0] = [3e3, -3e3]  # x[j] - x[j+1], scaled: fp32 finite, fp16 inf - inf = NaN
        nodes.append(helper.make_node("Conv", ["b0", init("o1", diff)], ["b1"], pads=[0, 0, 0, 1]))
        nodes.append(helper.make_node("Mul", ["b1", init("small", [1e-9])], ["b2"]))
        last = "b2"
    else:
        nodes.append(helper.make_node("Conv", [last, init("h0", w((1, 2, 1, 1)))], ["b2"]))
        last = "b2"
    nodes.append(helper.make_node("Tanh", [last], [OUTPUT_NAME]))
    graph = helper.make_graph(
        nodes, "transposed",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", 1, "H", "W"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    card = ModelCard(preset="test-transposed", normalisation=DEFAULT_NORM, training={"conv": conv})
    helper.set_model_props(model, {METADATA_KEY: card.to_json()})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def plain_run(model: str | bytes | Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model if isinstance(model, bytes) else str(model), providers=[CPU])
    return sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


@pytest.fixture
def transposed_model(tmp_path) -> Path:
    return build_transposed_model(tmp_path / "transposed.onnx")


def frames_of(shape, n, seed=0, dtype="<u2"):
    rng = np.random.default_rng(seed)
    return [rng.poisson(3.0, shape).astype(dtype) for _ in range(n)]


# --------------------------------------------------------------------------- warm-up and shapes


def test_warm_up_runs_the_configured_shapes_so_the_first_real_frames_are_no_new_shape(conv_model):
    engine = Engine(conv_model, EngineConfig(provider="cpu", max_batch=4, shapes=((20, 30), (64, 64))))
    assert engine.run_shapes == {}
    report = engine.warm_up()
    # on the CPU: the largest batch first (the arena is reserved in one piece), then batch 1
    assert [(shape, n) for shape, n, _ in report] == [((20, 30), 4), ((20, 30), 1), ((64, 64), 4), ((64, 64), 1)]
    assert set(engine.run_shapes) == engine.warmed == {(4, 1, 24, 32), (1, 1, 24, 32), (4, 1, 64, 64), (1, 1, 64, 64)}
    before = dict(engine.run_shapes)
    for frames in (frames_of((20, 30), 1), frames_of((64, 64), 4), frames_of((20, 30), 4, seed=1)):
        result = engine.infer(frames)
        assert not result.errors
        for f, out in zip(frames, result.outputs, strict=True):
            np.testing.assert_allclose(out, reference_denoise(conv_model, f), rtol=0, atol=2e-6)
    assert set(engine.run_shapes) == engine.warmed  # nothing the real frames ran was new
    assert sum(engine.run_shapes.values()) == sum(before.values()) + 3


def test_warm_up_leaves_no_series_history(build_model):
    card = ModelCard(preset="test-3f", normalisation=DEFAULT_NORM, input_frames=3)
    engine = Engine(build_model("threeframe.onnx", card=card), EngineConfig(provider="cpu", shapes=((16, 16),)))
    engine.warm_up()
    assert engine.warmed == {(8, 3, 16, 16), (1, 3, 16, 16)}
    assert not engine._history


def test_daemon_start_warms_the_engine_up_before_any_frame(daemon_factory, conv_model, detector):
    _, source = detector()
    daemon = daemon_factory(model=conv_model, source=source, engine=EngineConfig(provider="cpu", shapes=((40, 40),), max_batch=3))
    assert daemon.engine.warmed == {(3, 1, 40, 40), (1, 1, 40, 40)}


def test_batches_are_capped_by_pixels_and_outputs_unchanged(conv_model):
    # 2 frames of 32x32 per run at most: 5 frames run as 2 + 2 + 1
    engine = Engine(conv_model, EngineConfig(provider="cpu", max_batch=8, max_batch_pixels=2 * 32 * 32))
    assert engine.batch_cap((32, 32)) == 2 and engine.batch_cap((30, 27)) == 2 and engine.batch_cap((8, 8)) == 8
    assert engine.batch_cap((1024, 1024)) == 1  # a frame larger than the cap still runs, alone
    frames = frames_of((30, 27), 5)
    result = engine.infer(frames)
    assert not result.errors
    assert engine.run_shapes == {(2, 1, 32, 32): 2, (1, 1, 32, 32): 1}
    for f, out in zip(frames, result.outputs, strict=True):
        np.testing.assert_allclose(out, reference_denoise(conv_model, f), rtol=0, atol=2e-6)
    assert engine._buffers[(32, 32)].shape[0] == 2  # the input buffer is sized by the cap too


def test_default_cap_runs_1024_frames_one_at_a_time(conv_model):
    engine = Engine(conv_model, provider="cpu", max_batch=8)
    assert [engine.batch_cap((s, s)) for s in (128, 512, 1024)] == [8, 4, 1]


# --------------------------------------------------------------------------- memory options


def session_arena(engine: Engine) -> tuple[bool, str | None]:
    """The arena settings of the engine's real session: (CPU arena on, env allocator entry)."""
    opts = engine.session.get_session_options()
    try:
        env = opts.get_session_config_entry("session.use_env_allocators")
    except RuntimeError:  # onnxruntime raises for an entry never set
        env = None
    return opts.enable_cpu_mem_arena, env


def test_memory_options_are_applied_to_the_real_session(conv_model):
    engine = Engine(conv_model, provider="cpu")
    assert engine.cpu_arena and session_arena(engine) == (True, "1")  # arena growing by what is asked
    off = Engine(conv_model, EngineConfig(provider="cpu", cpu_arena=False))
    assert not off.cpu_arena and session_arena(off) == (False, None)
    doubling = Engine(conv_model, EngineConfig(provider="cpu", arena_extend_same=False))
    assert session_arena(doubling) == (True, None)  # the session's own arena, doubling as it grows
    spin = Engine(conv_model, EngineConfig(provider="cpu", spin=True, threads=1))
    opts = spin.session.get_session_options()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "1" and opts.intra_op_num_threads == 1


def test_stride1_transposed_convs_are_rewritten_and_give_the_same_frames(transposed_model):
    import onnx

    engine = Engine(transposed_model, provider="cpu")
    assert engine.rewritten == 3 and engine.cpu_arena  # the stride-2 one stays a ConvTranspose
    model = onnx.load(str(transposed_model))
    assert rewrite_transposed_convs(model) == 3
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("ConvTranspose") == 1 and ops.count("Conv") == 8
    rng = np.random.default_rng(2)
    for shape in [(1, 1, 16, 16), (3, 1, 24, 40), (1, 1, 8, 64)]:
        x = rng.normal(0, 1, shape).astype(np.float32)
        np.testing.assert_allclose(plain_run(model.SerializeToString(), x), plain_run(transposed_model, x), atol=2e-5)
    frames = frames_of((21, 35), 3)
    for f, out in zip(frames, engine.infer(frames).outputs, strict=True):
        np.testing.assert_allclose(out, reference_denoise(transposed_model, f), rtol=0, atol=2e-5)


def test_transposed_model_left_as_is_runs_without_the_arena(transposed_model):
    engine = Engine(transposed_model, EngineConfig(provider="cpu", optimise_graph=False))
    assert engine.rewritten == 0 and not engine.cpu_arena and session_arena(engine)[0] is False
    forced = Engine(transposed_model, EngineConfig(provider="cpu", optimise_graph=False, cpu_arena=True))
    assert forced.cpu_arena and session_arena(forced)[0] is True
    f = frames_of((16, 16), 1)[0]
    np.testing.assert_allclose(engine.infer([f]).outputs[0], reference_denoise(transposed_model, f), atol=2e-6)


# --------------------------------------------------------------------------- precision


def test_fp16_is_checked_against_fp32_and_used_when_close(transposed_model):
    engine = Engine(transposed_model, EngineConfig(provider="cpu", fp16=True))
    assert engine.precision == "fp16" and engine.describe()["precision"] == "fp16"
    assert 0 < engine.fp16_max_abs_diff <= engine.config.fp16_tolerance
    assert engine.session.get_inputs()[0].type == "tensor(float)"  # float32 in and out: same buffers
    frames = frames_of((32, 32), 2)
    for f, out in zip(frames, engine.infer(frames).outputs, strict=True):
        assert out.dtype == np.float32
        assert np.abs(out - reference_denoise(transposed_model, f)).max() < 0.05


def test_fp16_is_refused_when_it_leaves_the_tolerance(tmp_path, caplog):
    path = build_transposed_model(tmp_path / "overflow.onnx", overflow=True)
    x = validation_batch(ModelCard(preset="x", normalisation=DEFAULT_NORM))
    assert np.isfinite(plain_run(path, x)).all()  # fine in float32
    engine = Engine(path, EngineConfig(provider="cpu", fp16=True))
    assert engine.precision == "fp32" and engine.fp16_max_abs_diff > engine.config.fp16_tolerance
    assert "running fp32" in caplog.text
    strict_config = EngineConfig(provider="cpu", fp16=True, fp16_tolerance=1e-9)
    strict = Engine(build_transposed_model(tmp_path / "ok.onnx"), strict_config)
    assert strict.precision == "fp32" and strict.fp16_max_abs_diff > 1e-9


def test_max_display_diff_is_on_the_published_scale_and_catches_non_finite():
    a = np.zeros((1, 1, 4, 4), np.float32)
    assert max_display_diff(a, a + 0.1) == pytest.approx(0.05)  # tanh range [-1, 1] -> [0, 1]
    b = a.copy()
    b[0, 0, 1, 1] = np.nan
    assert max_display_diff(a, b) == float("inf")
    assert max_display_diff(a, a[:, :, :2]) == float("inf")


def test_validation_batch_is_normalised_like_training_input():
    x = validation_batch(ModelCard(preset="x", normalisation=DEFAULT_NORM, input_frames=3))
    assert x.shape == (2, 3, 128, 128) and x.dtype == np.float32
    assert abs(float(np.median(x))) < 0.05 and 0.5 < float(np.percentile(x, 99.9)) < 1.5
    np.testing.assert_array_equal(x[1, :2], x[0, 1:])  # causal windows of consecutive frames


# --------------------------------------------------------------------------- device path, providers


def test_io_binding_path_gives_the_same_frames(conv_model):
    engine = Engine(conv_model, EngineConfig(provider="cpu", io_binding=True, max_batch=3))
    assert engine.io_binding and engine.describe()["io_binding"]
    shapes = [(3, 5), (16, 16), (9, 70), (16, 16), (40, 40), (24, 8), (16, 16)]
    frames = [f for s in shapes for f in frames_of(s, 2, seed=len(s))]
    result = engine.infer(frames)
    assert not result.errors
    for f, out in zip(frames, result.outputs, strict=True):
        np.testing.assert_allclose(out, reference_denoise(conv_model, f), rtol=0, atol=2e-6)
    assert len(engine._runner._bindings) <= 4  # device buffers for a bounded number of shapes


def test_fixed_batch_runs_pad_partial_batches(conv_model):
    """The CUDA-graph path's fixed batch, on the CPU: 1 or 2 frames (and a NaN frame) run in the
    capped batch of 3, the extra rows are ignored."""
    engine = Engine(conv_model, EngineConfig(provider="cpu", io_binding=True, max_batch=3))
    engine._runner.add_graph(engine._run_shape((16, 16)))
    good = frames_of((16, 16), 2, dtype="<f4")
    bad = np.full((16, 16), np.nan, np.float32)
    result = engine.infer([good[0], bad, good[1]])
    assert [e[:2] for e in result.errors] == [(1, "malformed")]
    assert engine.run_shapes == {(3, 1, 16, 16): 1}
    for i, f in ((0, good[0]), (2, good[1])):
        np.testing.assert_allclose(result.outputs[i], reference_denoise(conv_model, f), rtol=0, atol=2e-6)
    single = engine.infer([good[1]])
    np.testing.assert_allclose(single.outputs[0], reference_denoise(conv_model, good[1]), rtol=0, atol=2e-6)
    assert engine.run_shapes == {(3, 1, 16, 16): 2}


def test_the_provider_reported_is_the_sessions(conv_model):
    engine = Engine(conv_model)
    assert engine.providers == engine.session.get_providers() and engine.provider == engine.providers[0]
    assert engine.describe()["providers"] == engine.providers
    cpu = Engine(conv_model, provider="cpu")
    assert cpu.providers == [CPU]
    if CUDA in ort.get_available_providers() and engine.provider == CPU:  # CUDA built in, no usable GPU
        with pytest.raises(LivedenoiseError, match="requested but the session runs on"):
            Engine(conv_model, provider="cuda")


def test_unknown_provider_is_refused(conv_model):
    with pytest.raises(LivedenoiseError, match="not available"):
        Engine(conv_model, provider="nonsense")


def test_tensorrt_profiles_cover_each_configured_shape_within_the_pixel_cap():
    card = ModelCard(preset="x", normalisation=DEFAULT_NORM, size_multiple=8)
    prof = trt_profiles(EngineConfig(shapes=((128, 128), (1001, 1024))), card)
    assert prof["trt_profile_min_shapes"] == "noisy:1x1x128x128,noisy:1x1x1008x1024"
    assert prof["trt_profile_max_shapes"] == "noisy:8x1x128x128,noisy:1x1x1008x1024"
    assert trt_profiles(EngineConfig(), None) == {}


def test_gpu_provider_options(tmp_path):
    card = ModelCard(preset="x", normalisation=DEFAULT_NORM, input_frames=3)
    cfg = EngineConfig(cuda_graph=True, trt_fp16=True, trt_cache=tmp_path / "trt", shapes=((512, 512),), device_id=1)
    (trt_name, trt), (cuda_name, cuda), cpu = provider_list([TENSORRT, CUDA, CPU], cfg, card)
    assert (trt_name, cuda_name, cpu) == (TENSORRT, CUDA, CPU)
    assert cuda == {
        "device_id": "1", "arena_extend_strategy": "kSameAsRequested", "cudnn_conv_algo_search": "EXHAUSTIVE",
        "do_copy_in_default_stream": "True", "enable_cuda_graph": "True",
    }
    # onnxruntime's binding accepts only "True"/"False" for TensorRT's booleans
    assert trt["trt_fp16_enable"] == trt["trt_engine_cache_enable"] == trt["trt_cuda_graph_enable"] == "True"
    assert trt["trt_engine_cache_path"] == str(tmp_path / "trt") and (tmp_path / "trt").is_dir()
    assert trt["trt_profile_max_shapes"] == "noisy:4x3x512x512"
    plain = provider_list([CUDA, CPU], EngineConfig(), None)
    assert "enable_cuda_graph" not in plain[0][1] and plain[1] == CPU
    assert provider_list([TENSORRT, CUDA, CPU], EngineConfig(), None)[0][1]["trt_fp16_enable"] == "False"


def test_config_is_checked():
    with pytest.raises(LivedenoiseError):
        EngineConfig(max_batch=0)
    with pytest.raises(LivedenoiseError):
        EngineConfig(shapes=((0, 128),))


def test_fixed_batch_runs_every_batch_at_the_cap_with_the_same_outputs(conv_model):
    """GPU default (``fixed_batch``): one device shape per frame size, whatever a live stream's
    batch sizes; forced on here with the CPU's IOBinding, the outputs must not change."""
    rng = np.random.default_rng(5)
    frames = [rng.poisson(2.0, (40, 56)).astype(np.float32) for _ in range(5)]
    plain = Engine(conv_model, EngineConfig(provider="cpu", max_batch=4))
    fixed = Engine(conv_model, EngineConfig(provider="cpu", max_batch=4, io_binding=True, fixed_batch=True))
    for group in (frames[:3], frames[3:4], frames[:4], frames):
        for a, b in zip(plain.infer(group).outputs, fixed.infer(group).outputs, strict=True):
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
    assert {s[0] for s in plain.run_shapes} == {1, 3, 4}
    assert {s[0] for s in fixed.run_shapes} == {4}
    assert [n for _shape, n, _t in fixed.warm_up((40, 56))] == [4]  # the one shape it will run
