"""Model transforms applied at load: stride-1 ConvTranspose as Conv, float16, and the check of
a transformed model against the original on a validation batch."""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np

from ._modelcard import ModelCard, causal_windows, to_display

VALIDATION_SIZE = 128  # side of the frames fp16 is checked on against fp32

def rewrite_transposed_convs(model) -> int:
    """Rewrite, in place, every stride-1 ungrouped ``ConvTranspose`` of an ``onnx.ModelProto``
    whose weight is an initializer as the equivalent ``Conv``; return how many.

    ``ConvTranspose(x, W)`` with unit strides and dilations and pads ``p`` equals
    ``Conv(x, W')`` with ``W'`` = ``W`` with in/out channels swapped and both kernel axes
    flipped, and pads ``k - 1 - p``. Same function (float sums in another order, ~1e-6), but
    onnxruntime's CPU ``ConvTranspose`` materialises a ``Cout*kh*kw x H*W`` column buffer (the
    ``paper`` preset's 7x7 at 1024²: 1.6 GB per node) where ``Conv`` works in bounded tiles.

    >>> import onnx                                        # doctest: +SKIP
    >>> m = onnx.load("paper.onnx"); rewrite_transposed_convs(m)   # doctest: +SKIP
    49
    """
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    uses = Counter(name for node in model.graph.node for name in node.input)
    done = 0
    for node in model.graph.node:
        if node.op_type != "ConvTranspose" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        w_name = node.input[1]
        if w_name not in inits or uses[w_name] != 1:
            continue
        w = numpy_helper.to_array(inits[w_name])
        if w.ndim != 4:
            continue
        k = [int(v) for v in w.shape[2:]]
        pads = [int(v) for v in attrs.get("pads", [0, 0, 0, 0])]
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        if (
            attrs.get("group", 1) != 1
            or any(s != 1 for s in attrs.get("strides", [1, 1]))
            or any(d != 1 for d in attrs.get("dilations", [1, 1]))
            or any(attrs.get("output_padding", [0, 0]))
            or "output_shape" in attrs
            or auto_pad not in (b"NOTSET", "NOTSET")
            or len(pads) != 4
            or any(p < 0 or p > kk - 1 for p, kk in zip(pads, k + k, strict=True))
        ):
            continue
        conv_w = np.ascontiguousarray(np.flip(w, (2, 3)).transpose(1, 0, 2, 3))
        inits[w_name].CopyFrom(numpy_helper.from_array(conv_w, w_name))
        del node.attribute[:]
        node.op_type = "Conv"
        node.attribute.extend([
            helper.make_attribute("kernel_shape", k),
            helper.make_attribute("pads", [kk - 1 - p for p, kk in zip(pads, k + k, strict=True)]),
        ])
        done += 1
    return done


def to_fp16(model):
    """An ``onnx.ModelProto`` converted to float16 inside, float32 inputs and outputs kept."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # values clamped to the fp16 range are reported as warnings
        return convert_float_to_float16(model, keep_io_types=True)


def validation_batch(card: ModelCard, size: int = VALIDATION_SIZE, frames: int = 2) -> np.ndarray:
    """Network input ``[frames, k, size, size]``: sparse Gaussian atoms (sigma 0.9 px) under
    Poisson noise, normalised like a trained model's input (background near 0, the brightest
    atoms near +1): what precision checks run on. Made here rather than by :mod:`livedenoise.sim`,
    which the engine never imports; seeded, so every load checks the same frames."""
    rng = np.random.default_rng(7)
    k = card.input_frames
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    centres = rng.uniform(4, size - 4, (max(1, size * size // 400), 2)).astype(np.float32)
    clean = np.zeros((size, size), np.float32)
    for cx, cy in centres:
        clean += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 0.9**2))
    x = rng.poisson(0.5 + 5.0 * clean, (frames + k - 1, size, size)).astype(np.float32)
    lo = float(np.median(x))
    hi = float(np.percentile(x, 99.9))
    x = (x - lo) / (hi - lo if hi > lo else 1.0)
    return np.ascontiguousarray(causal_windows(x, k, np.arange(k - 1, x.shape[0])), dtype=np.float32)


def max_display_diff(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Max abs difference of two model outputs as published ([0, 1]); inf if either is not finite."""
    a = to_display(np.asarray(reference, np.float32))
    b = to_display(np.asarray(candidate, np.float32))
    if a.shape != b.shape or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("inf")
    return float(np.abs(a - b).max())



def unit_stride_transposed_convs(model) -> int:
    return sum(
        1 for node in model.graph.node
        if node.op_type == "ConvTranspose"
        and all(a.name != "strides" or all(v == 1 for v in a.ints) for a in node.attribute)
    )


def has_unit_stride_transposed_convs(proto, card: ModelCard) -> bool:
    """Whether the model keeps stride-1 ConvTranspose nodes (from the graph, else from the card:
    the ``paper`` preset's "valid" convolutions are made of them)."""
    if proto is not None:
        return unit_stride_transposed_convs(proto) > 0
    return card.training.get("conv") == "valid"

