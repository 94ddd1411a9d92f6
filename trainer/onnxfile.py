"""ONNX files with their model card, without torch: the card written into the metadata, atomic
writes, and a quick onnxruntime run (shared by the Noise2Atom export, the self-supervised model
and the causal filter's graph)."""

from __future__ import annotations

import collections
import os
from pathlib import Path

import numpy as np

from livedenoise.engine import INPUT_NAME, METADATA_KEY, OUTPUT_NAME, ModelCard


def op_histogram(onnx_bytes_or_model) -> dict[str, int]:
    import onnx

    model = onnx.load_from_string(onnx_bytes_or_model) if isinstance(onnx_bytes_or_model, bytes) else onnx_bytes_or_model
    return dict(collections.Counter(n.op_type for n in model.graph.node))


def with_card(onnx_bytes: bytes, card: ModelCard) -> bytes:
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = card.to_json()
    model.producer_name = "livedenoise-trainer"
    return model.SerializeToString()


def run_onnx(onnx_bytes: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
    return sess.run([OUTPUT_NAME], {INPUT_NAME: x.astype(np.float32)})[0]


def write_model(out: Path | str, data: bytes) -> None:
    """Write ``data`` to ``out`` atomically (a reader never sees half a model)."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)
