"""A motion-aware causal window in front of a trained window-mean model, built into its ONNX graph.

The ``temporal`` models (``lowdose``: 5 frames) begin with the plain mean of their causal window
(one ``ReduceMean`` over the frame axis). An atom that hops is then shown at its old site until
the window has forgotten it, and at its new one only once most of the window has seen it there:
hop recall 0.00-0.06 in ``docs/quality.md``. No retraining is needed to fix the *window*: where
the latest frames disagree with the older ones beyond what Poisson noise allows, the older ones
are left out of the mean there.

**The gate** (numpy reference :func:`gate_reference`, graph :func:`gate_nodes`), per pixel, for a
window of ``k`` frames, oldest first, normalised as the model card says:

1. Each frame smoothed by a Gaussian of ``sigma`` px (reflected edges, kernel radius
   ``ceil(3 sigma)``): a matched filter for an atom (the simulator's atoms have sigma 0.875 px).
2. For every split ``n = 1 .. k-1`` (the last ``n`` frames "new", the ``k - n`` before "old"): the
   difference of the two smoothed means, in counts (the card's normalisation undone), and its
   noise variance from the smoothed means themselves (Poisson: variance = mean counts), plus the
   read noise (white: times sum g^2 of the 2-D kernel) and the per-row offset (the same along a
   row, so smoothing along the row does not reduce it: times sum g^2 of the 1-D kernel):
   ``var_n = ((lam_new + read^2) G2 + line^2 G1) / n + ((lam_old + read^2) G2 + line^2 G1) / (k - n)``
   and ``z_n^2 = diff_n^2 / var_n``.
3. Where some ``z_n > threshold``, the window's mean is replaced by the (unsmoothed) mean of the
   last ``n`` frames, for the split with the largest ``z_n`` (the likeliest change point: a hop
   ``d`` frames ago gives its largest z at ``n = d + 1``); elsewhere the plain mean is kept.
   (Variants tried while tuning: another threshold for ``n = 1``, the newest frame alone, the
   noisiest test; testing only ``n <= max_new``.)

So right after a hop, the old site shows what the newest frames show (no ghost) and the new site
the mean of the frames since the hop (the atom, noisier than a 5-frame mean, but there). The rest
of the graph is the trained network, unchanged: it reads the gated mean where it read the mean.

Parameters were chosen on simulated movies with seeds neither the model nor ``docs/quality.md``
uses (``tools/build_hops_model.py``). Needs ``onnx`` (a core dependency), not torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["GateParams", "build_gated_model", "gate_graph", "gate_nodes", "gate_reference", "gaussian_kernel_1d"]

GATED_MEAN = "gate/gated_mean"  # the tensor that replaces the window mean


@dataclass(frozen=True, slots=True)
class GateParams:
    """The gate's parameters; the noise figures are the detector's, in counts (the simulator's and
    dev-D's: read noise 0.25 per pixel, 0.15 per scan line)."""

    sigma: float = 1.0  # px, Gaussian smoothing before the comparison
    threshold: float = 3.0  # z above which the older frames are left out
    threshold_newest: float | None = None  # for the split n = 1 (the newest frame alone); None: ``threshold``
    max_new: int | None = None  # splits tested: n = 1 .. max_new (None: k - 1)
    read_noise: float = 0.25  # counts, white per pixel
    line_noise: float = 0.15  # counts, one offset per scan line (row)

    def __post_init__(self) -> None:
        t1 = self.threshold if self.threshold_newest is None else self.threshold_newest
        if not (self.sigma > 0 and self.threshold > 0 and t1 > 0 and self.read_noise >= 0 and self.line_noise >= 0
                and (self.max_new is None or self.max_new >= 1)):
            raise ValueError(f"gate parameters out of range: {self}")


def gaussian_kernel_1d(sigma: float) -> np.ndarray:
    """Normalised Gaussian of radius ``ceil(3 sigma)``."""
    r = max(1, math.ceil(3 * sigma))
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def _noise_factors(g1d: np.ndarray) -> tuple[float, float]:
    """(G2, G1): the variance a white pixel noise and a per-row offset keep after the 2-D smoothing."""
    s1 = float((g1d**2).sum())
    return s1 * s1, s1


def _thresholds2(k: int, p: GateParams) -> np.ndarray:
    """z^2 thresholds per split n = 1 .. k-1 (inf: split not tested)."""
    t = np.full(k - 1, float(p.threshold) ** 2)
    if p.threshold_newest is not None:
        t[0] = float(p.threshold_newest) ** 2
    if p.max_new is not None:
        t[p.max_new :] = np.inf
    return t


def _split_matrices(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights over the k frames: new means (n = 1..k-1), old means, and [new means..., full mean]."""
    new = np.zeros((k - 1, k))
    old = np.zeros((k - 1, k))
    for i, n in enumerate(range(1, k)):
        new[i, k - n:] = 1.0 / n
        old[i, : k - n] = 1.0 / (k - n)
    out = np.vstack([new, np.full((1, k), 1.0 / k)])
    return new, old, out


def gate_reference(window: np.ndarray, offset: float, scale: float, p: GateParams) -> np.ndarray:
    """The gated mean of normalised windows ``(N, k, H, W)`` -> ``(N, 1, H, W)``, in numpy (float64).

    >>> w = np.zeros((1, 3, 16, 16)); w[0, 2, 8, 8] = 40.0   # a bright spot in the newest frame only
    >>> g = gate_reference(w, offset=0.5, scale=0.6, p=GateParams())
    >>> float(g[0, 0, 8, 8]), float(g[0, 0, 0, 0])           # the newest frame there, the mean elsewhere
    (40.0, 0.0)
    """
    x = np.asarray(window, np.float64)
    _, k, h, w = x.shape
    if k < 2:
        return x.copy()
    g = gaussian_kernel_1d(p.sigma)
    r = g.size // 2
    xp = np.pad(x, ((0, 0), (0, 0), (r, r), (r, r)), mode="reflect")
    tmp = sum(g[i] * xp[:, :, i : i + h, :] for i in range(g.size))
    s = sum(g[i] * tmp[:, :, :, i : i + w] for i in range(g.size))
    new_w, old_w, out_w = _split_matrices(k)
    new_s = np.einsum("ck,nkhw->nchw", new_w, s)
    old_s = np.einsum("ck,nkhw->nchw", old_w, s)
    means = np.einsum("ck,nkhw->nchw", out_w, x)
    g2, g1 = _noise_factors(g)
    floor = p.read_noise**2 * g2 + p.line_noise**2 * g1
    lam_new = np.maximum(new_s / scale + offset, 0.0)
    lam_old = np.maximum(old_s / scale + offset, 0.0)
    nn = np.arange(1, k, dtype=np.float64)[None, :, None, None]
    var = (lam_new * g2 + floor) / nn + (lam_old * g2 + floor) / (k - nn)
    z2 = ((new_s - old_s) / scale) ** 2 / var
    z2 = np.where(z2 > _thresholds2(k, p)[None, :, None, None], z2, 0.0)
    best = np.argmax(z2, axis=1)[:, None]
    chosen = np.take_along_axis(means[:, : k - 1], best, axis=1)
    return np.where(z2.max(axis=1, keepdims=True) > 0, chosen, means[:, k - 1 :])


def gate_nodes(inp: str, out: str, k: int, offset: float, scale: float, p: GateParams, prefix: str = "gate/"):
    """ONNX nodes and initializers computing :func:`gate_reference` from tensor ``inp`` into ``out``
    (opset >= 13: Pad with input pads, ReduceMax with attribute axes)."""
    from onnx import helper, numpy_helper

    g = gaussian_kernel_1d(p.sigma)
    r = g.size // 2
    g2, g1 = _noise_factors(g)
    floor = p.read_noise**2 * g2 + p.line_noise**2 * g1
    new_w, old_w, out_w = _split_matrices(k)
    nn = np.arange(1, k, dtype=np.float64)
    f32 = np.float32

    def init(name: str, a) -> str:
        a = np.asarray(a)
        inits.append(numpy_helper.from_array(a if a.dtype == np.int64 else a.astype(f32), prefix + name))
        return prefix + name

    inits: list = []
    t = lambda name: prefix + name  # noqa: E731 - short tensor names
    kx = np.outer(g, g)[None, None].repeat(k, axis=0)  # (k, 1, K, K), one per frame (group conv)
    nodes = [
        helper.make_node("Pad", [inp, init("pads", np.array([0, 0, r, r, 0, 0, r, r], np.int64))], [t("padded")], mode="reflect"),
        helper.make_node("Conv", [t("padded"), init("kernel", kx)], [t("smooth")], group=k, kernel_shape=[g.size, g.size]),
        helper.make_node("Conv", [t("smooth"), init("w_new", new_w[:, :, None, None])], [t("new_s")], kernel_shape=[1, 1]),
        helper.make_node("Conv", [t("smooth"), init("w_old", old_w[:, :, None, None])], [t("old_s")], kernel_shape=[1, 1]),
        helper.make_node("Conv", [inp, init("w_means", out_w[:, :, None, None])], [t("means")], kernel_shape=[1, 1]),
        # counts: x / scale + offset, floored at 0
        helper.make_node("Mul", [t("new_s"), init("inv_scale", 1.0 / scale)], [t("new_c")]),
        helper.make_node("Add", [t("new_c"), init("offset", offset)], [t("new_c0")]),
        helper.make_node("Relu", [t("new_c0")], [t("lam_new")]),
        helper.make_node("Mul", [t("old_s"), init("inv_scale2", 1.0 / scale)], [t("old_c")]),
        helper.make_node("Add", [t("old_c"), init("offset2", offset)], [t("old_c0")]),
        helper.make_node("Relu", [t("old_c0")], [t("lam_old")]),
        # var = (lam_new G2 + floor) / n + (lam_old G2 + floor) / (k - n)
        helper.make_node("Mul", [t("lam_new"), init("g2_new", (g2 / nn)[None, :, None, None])], [t("vn")]),
        helper.make_node("Mul", [t("lam_old"), init("g2_old", (g2 / (k - nn))[None, :, None, None])], [t("vo")]),
        helper.make_node("Add", [t("vn"), t("vo")], [t("v")]),
        helper.make_node("Add", [t("v"), init("floor", (floor / nn + floor / (k - nn))[None, :, None, None])], [t("var")]),
        # z^2 = ((new - old) / scale)^2 / var
        helper.make_node("Sub", [t("new_s"), t("old_s")], [t("d")]),
        helper.make_node("Mul", [t("d"), init("inv_scale3", 1.0 / scale)], [t("dc")]),
        helper.make_node("Mul", [t("dc"), t("dc")], [t("d2")]),
        helper.make_node("Div", [t("d2"), t("var")], [t("z2")]),
        helper.make_node("Greater", [t("z2"), init("thr2", np.minimum(_thresholds2(k, p), 3e38)[None, :, None, None])], [t("over")]),
        helper.make_node("Where", [t("over"), t("z2"), init("zero", 0.0)], [t("z2m")]),
        helper.make_node("ArgMax", [t("z2m")], [t("best")], axis=1, keepdims=1),
        helper.make_node("ReduceMax", [t("z2m")], [t("zmax")], axes=[1], keepdims=1),
        helper.make_node("Greater", [t("zmax"), init("zero2", 0.0)], [t("any")]),
        helper.make_node("Split", [t("means"), init("split", np.array([k - 1, 1], np.int64))], [t("new_means"), t("full")], axis=1),
        helper.make_node("GatherElements", [t("new_means"), t("best")], [t("chosen")], axis=1),
        helper.make_node("Where", [t("any"), t("chosen"), t("full")], [out]),
    ]
    return nodes, inits


def gate_graph(k: int, offset: float, scale: float, p: GateParams, opset: int = 17):
    """A standalone model ``window (N, k, H, W) -> gated (N, 1, H, W)``: for tests against the reference."""
    from onnx import TensorProto, helper

    nodes, inits = gate_nodes("window", "gated", k, offset, scale, p)
    graph = helper.make_graph(
        nodes, "gate", [helper.make_tensor_value_info("window", TensorProto.FLOAT, ["N", k, "H", "W"])],
        [helper.make_tensor_value_info("gated", TensorProto.FLOAT, ["N", 1, "H", "W"])], initializer=inits,
    )
    # IR version 8 (that of the shipped models): onnx may default to one onnxruntime cannot read yet
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def build_gated_model(model, p: GateParams, note: str = ""):
    """``model`` (an ``onnx.ModelProto`` of a window-mean model: its first node is ``ReduceMean``
    over axis 1 of the input) with the gate in place of that mean, and its card updated
    (``training.gate``: the parameters, ``note``). Returns a new ModelProto."""
    import copy
    import json

    import onnx
    from onnx import helper

    from livedenoise.engine import INPUT_NAME, METADATA_KEY, ModelCard

    m = copy.deepcopy(model)
    meta = {prop.key: prop.value for prop in m.metadata_props}
    card = ModelCard.from_metadata(meta, "the model")
    k = int(card.input_frames)
    if k < 2:
        raise ValueError("the gate needs a multi-frame model (input_frames > 1)")
    if card.normalisation.flatten_sigma:
        raise ValueError("the gate needs counts-linear input: a model with flatten_sigma is not supported")
    means = [n for n in m.graph.node if n.op_type == "ReduceMean" and list(n.input[:1]) == [INPUT_NAME]]
    if len(means) != 1:
        raise ValueError(f"expected one ReduceMean of {INPUT_NAME!r}, found {len(means)}")
    rm = means[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in rm.attribute}
    if list(attrs.get("axes", [])) != [1] or attrs.get("keepdims", 1) != 1 or len(rm.input) > 1:
        raise ValueError(f"the window mean is not ReduceMean(axes=[1], keepdims=1): {attrs}")
    opset = max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 13:
        raise ValueError(f"opset {opset} < 13")
    old_out = rm.output[0]
    nodes, inits = gate_nodes(INPUT_NAME, GATED_MEAN, k, card.normalisation.offset, card.normalisation.scale, p)
    for n in m.graph.node:
        for i, name in enumerate(n.input):
            if name == old_out:
                n.input[i] = GATED_MEAN
    m.graph.node.remove(rm)
    rest = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(nodes + rest)
    m.graph.initializer.extend(inits)
    training = dict(card.training) | {"gate": asdict(p) | {"note": note, "base_preset": card.preset}}
    raw = json.loads(card.to_json())
    raw["training"] = training
    new_card = ModelCard.from_json(json.dumps(raw))
    for prop in m.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = new_card.to_json()
    onnx.checker.check_model(m, full_check=True)
    return m
