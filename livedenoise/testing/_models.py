"""Small real ONNX models that follow the livedenoise tensor contract, and what serve must publish
for one of them, computed independently of the engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from livedenoise.engine import INPUT_NAME, METADATA_KEY, OUTPUT_NAME, ModelCard, Normalisation

DEFAULT_NORM = Normalisation(offset=2.0, scale=0.25)  # the card of :func:`build_onnx_model` by default


def build_onnx_model(
    path: Path,
    *,
    card: ModelCard | None = None,
    with_card: bool = True,
    width: int = 1,
    depth: int = 1,
    fixed_hw: tuple[int, int] | None = None,
    fail_above: float | None = None,
    seed: int = 0,
    preset: str = "test-conv",
) -> Path:
    """Write a small real convolutional model following the livedenoise tensor contract.

    Input ``noisy`` float32 ``[N, input_frames, H, W]`` (dynamic N, H, W unless ``fixed_hw``),
    output ``clean`` float32 ``[N, 1, H, W]`` = tanh of a stack of 3x3 'same' convolutions; with
    ``depth=0`` the input itself, clipped to [-1, 1] (no arithmetic: the daemon's ceiling).

    Parameters
    ----------
    card : the model card (default: preset ``preset``, :data:`DEFAULT_NORM`, size multiple 8).
    with_card : False writes no ``livedenoise`` metadata (the daemon must refuse the model).
    width, depth : ``depth`` 3x3 convs with ``width`` hidden channels; large values make a
        deliberately slow (but sleep-free) model for drop tests.
    fixed_hw : declare fixed H and W: frames of another shape fail inside onnxruntime.
    fail_above : the model raises at run time (Gather index out of range) when any input pixel
        exceeds this value: a model that fails on some batches and not on others.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    card = card or ModelCard(preset=preset, normalisation=DEFAULT_NORM)
    cin = card.input_frames
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = INPUT_NAME
    chans = [cin] + [width] * (depth - 1) + [1]
    for i in range(depth):
        w = rng.normal(0, 1.0 / np.sqrt(9 * chans[i]), (chans[i + 1], chans[i], 3, 3)).astype(np.float32)
        b = rng.normal(0, 0.05, chans[i + 1]).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        y = f"conv{i}"
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [y], pads=[1, 1, 1, 1]))
        if i < depth - 1:
            nodes.append(helper.make_node("Relu", [y], [f"relu{i}"]))
            y = f"relu{i}"
        x = y
    if depth == 0:
        if cin != 1:
            raise ValueError("depth=0 (the identity) takes one input frame")
        inits += [numpy_helper.from_array(np.float32(-1.0), "lo"), numpy_helper.from_array(np.float32(1.0), "hi")]
    if fail_above is not None:
        # index = (max(x) > fail_above) * 1000 into a 1-element table: out of range -> run-time error
        inits += [
            numpy_helper.from_array(np.array([fail_above], np.float32), "thr"),
            numpy_helper.from_array(np.array([1000], np.int64), "big"),
            numpy_helper.from_array(np.zeros(1, np.float32), "table"),
        ]
        nodes += [
            helper.make_node("ReduceMax", [INPUT_NAME], ["mx"], keepdims=0),
            helper.make_node("Greater", ["mx", "thr"], ["gt"]),
            helper.make_node("Cast", ["gt"], ["gt64"], to=TensorProto.INT64),
            helper.make_node("Mul", ["gt64", "big"], ["idx"]),
            helper.make_node("Gather", ["table", "idx"], ["zero"]),
            helper.make_node("Add", [x, "zero"], ["guarded"]),
        ]
        x = "guarded"
    nodes.append(helper.make_node("Tanh", [x], [OUTPUT_NAME]) if depth else helper.make_node("Clip", [x, "lo", "hi"], [OUTPUT_NAME]))
    h, w = fixed_hw if fixed_hw else ("H", "W")
    graph = helper.make_graph(
        nodes,
        preset,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", cin, h, w])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", 1, h, w])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    if with_card:
        helper.set_model_props(model, {METADATA_KEY: card.to_json()})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def reference_denoise(model_path: Path, frame: np.ndarray) -> np.ndarray:
    """What ``serve`` must publish for one single-frame model input, computed independently:
    model-card normalisation, reflect padding to the size multiple, a plain onnxruntime run,
    crop, and the [-1, 1] -> [0, 1] display mapping."""
    import onnxruntime as ort

    from livedenoise.engine import normalise, to_display

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    card = ModelCard.from_metadata(sess.get_modelmeta().custom_metadata_map)
    x = normalise(np.asarray(frame), card.normalisation)
    m = card.size_multiple
    h, w = x.shape
    x = np.pad(x, ((0, -h % m), (0, -w % m)), mode="reflect")
    (y,) = sess.run([OUTPUT_NAME], {INPUT_NAME: x[None, None]})
    return to_display(y[0, 0, :h, :w])
