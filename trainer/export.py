"""Export Ms2c to ONNX with its model card (the contract of :mod:`livedenoise.engine`).

* input ``"noisy"`` ``[N, input_frames, H, W]`` and output ``"clean"`` ``[N, 1, H, W]``, with
  dynamic N, H and W;
* the TorchScript exporter (``dynamo=False``): it keeps ``InstanceNorm2d`` and the per-sample
  layer norm (:class:`trainer.networks.LayerNorm1`) as single ``InstanceNormalization`` ops,
  where the dynamo exporter decomposes each into a chain of elementwise ops;
* the :class:`~livedenoise.engine.ModelCard` JSON under metadata key ``"livedenoise"``;
* checked against torch at export time on the given frames (max abs difference printed).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch

from livedenoise.engine import INPUT_NAME, OUTPUT_NAME, ModelCard
from livedenoise.errors import LivedenoiseError

from .onnxfile import op_histogram, run_onnx, with_card, write_model

OPSET = 17
TOLERANCE = 1e-3


def to_onnx_bytes(model: torch.nn.Module, input_frames: int = 1, size: int = 128) -> bytes:
    """The ONNX graph of ``model`` (eval mode, CPU) with dynamic batch, height and width."""
    import copy

    model = copy.deepcopy(model).cpu().eval()
    dummy = torch.zeros(1, input_frames, size, size)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation and instance_norm train-mode notes
        torch.onnx.export(
            model,
            (dummy,),
            buf,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, OUTPUT_NAME: {0: "batch", 2: "height", 3: "width"}},
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
    return buf.getvalue()


def verify(model: torch.nn.Module, onnx_bytes: bytes, inputs: list[np.ndarray]) -> float:
    """Max abs difference between torch and onnxruntime over ``inputs`` (each ``[N, C, H, W]``)."""
    import copy

    model = copy.deepcopy(model).cpu().eval()
    worst = 0.0
    for x in inputs:
        with torch.no_grad():
            ref = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()
        got = run_onnx(onnx_bytes, x)
        if got.shape != ref.shape:
            raise LivedenoiseError(f"exported model gives shape {got.shape}, torch {ref.shape}")
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst


def export_model(
    model: torch.nn.Module,
    out: Path,
    card: ModelCard,
    check_inputs: list[np.ndarray],
    log=print,
) -> dict[str, object]:
    """Write ``out`` (atomically) and return ``{"max_abs_diff", "ops", "bytes"}``."""
    raw = to_onnx_bytes(model, card.input_frames)
    ops = op_histogram(raw)
    diff = verify(model, raw, check_inputs)
    log(f"export: max |onnxruntime - torch| = {diff:.2e} over {len(check_inputs)} check input(s)")
    if not diff < TOLERANCE:
        raise LivedenoiseError(f"exported model differs from torch by {diff:.3g} (> {TOLERANCE}); not written")
    data = with_card(raw, card)
    write_model(out, data)
    log(f"export: wrote {out} ({len(data) / 1e6:.2f} MB, {sum(ops.values())} ops: "
        + ", ".join(f"{k} {v}" for k, v in sorted(ops.items(), key=lambda kv: -kv[1])) + ")")
    return {"max_abs_diff": diff, "ops": ops, "bytes": len(data)}
