"""The classical causal filter as an ONNX model (no torch): ``serve --model filter`` and what
``train`` keeps when no network beats it.

The graph is the filter of :class:`livedenoise.analysis.CausalFilter` on the engine's window of
``window`` frames: a 1 x 1 convolution across the frames (their weights), then the Gaussian as two
1-D convolutions behind reflection pads, then the map to the engine's output range: fixed
(``display``: raw units that become 0 and 1) or each frame's own minimum and maximum.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from livedenoise.analysis import CausalFilter, gaussian_kernel
from livedenoise.engine import INPUT_NAME, OUTPUT_NAME, ModelCard, Normalisation

OPSET = 17


def filter_graph(flt: CausalFilter, display: tuple[float, float] | None = None) -> bytes:
    """The ONNX graph (no card) of ``flt`` reading ``[N, flt.window, H, W]`` raw frames."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []

    def const(name: str, value: Any, dtype=np.float32) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    w = flt.weights().astype(np.float32).reshape(1, flt.window, 1, 1)
    nodes.append(helper.make_node("Conv", [INPUT_NAME, const("frame_weights", w)], ["mean"]))
    last = "mean"
    if flt.sigma > 0:
        g = gaussian_kernel(flt.sigma)
        r = g.size // 2
        for axis, shape, pads in (("x", (1, 1, 1, g.size), [0, 0, 0, r, 0, 0, 0, r]), ("y", (1, 1, g.size, 1), [0, 0, r, 0, 0, 0, r, 0])):
            nodes.append(helper.make_node("Pad", [last, const(f"pads_{axis}", pads, np.int64)], [f"padded_{axis}"], mode="reflect"))
            nodes.append(helper.make_node("Conv", [f"padded_{axis}", const(f"gauss_{axis}", g.reshape(shape))], [f"blur_{axis}"]))
            last = f"blur_{axis}"
    if display is not None:
        lo, hi = display
        scale = 2.0 / max(hi - lo, 1e-12)
        nodes.append(helper.make_node("Mul", [last, const("scale", scale)], ["scaled"]))
        nodes.append(helper.make_node("Add", ["scaled", const("shift", -lo * scale - 1.0)], [OUTPUT_NAME]))
    else:
        nodes.append(helper.make_node("ReduceMin", [last], ["lo"], axes=[1, 2, 3], keepdims=1))
        nodes.append(helper.make_node("ReduceMax", [last], ["hi"], axes=[1, 2, 3], keepdims=1))
        nodes.append(helper.make_node("Sub", [last, "lo"], ["above"]))
        nodes.append(helper.make_node("Sub", ["hi", "lo"], ["range"]))
        nodes.append(helper.make_node("Add", ["range", const("tiny", 1e-12)], ["range_safe"]))
        nodes.append(helper.make_node("Div", ["above", "range_safe"], ["unit"]))
        nodes.append(helper.make_node("Mul", ["unit", const("two", 2.0)], ["twice"]))
        nodes.append(helper.make_node("Sub", ["twice", const("one", 1.0)], [OUTPUT_NAME]))
    graph = helper.make_graph(
        nodes, f"causal_filter_{flt.window}",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", flt.window, "height", "width"])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", 1, "height", "width"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="livedenoise-trainer")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def filter_card(flt: CausalFilter, training: dict[str, Any], **card: Any) -> ModelCard:
    """The card of a filter model: raw frames in (no normalisation), ``flt.window`` frames."""
    return ModelCard(preset="filter", normalisation=Normalisation(offset=0.0, scale=1.0), input_frames=flt.window,
                     size_multiple=1, training={"filter": flt.to_dict(), "method": "filter", **training}, **card)
