"""Building the onnxruntime session: the model file parsed once, session options, loading."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import ModelError, short_error
from ._config import EngineConfig
from ._modelcard import ModelCard
from ._providers import register_cpu_arena

log = logging.getLogger("livedenoise.engine")


def load_proto(path: Path) -> tuple[Any, ModelCard | None]:
    """The model as ``onnx.ModelProto`` and its card, or ``(None, None)`` where ``onnx`` is
    missing or the file does not parse (onnxruntime then reports the error)."""
    try:
        import onnx
    except ImportError:
        log.warning("the onnx package is not installed: the model runs as exported (no ConvTranspose "
                    "rewrite, no fp16, no TensorRT profiles); pip install onnx")
        return None, None
    try:
        proto = onnx.load(str(path))
    except Exception:  # noqa: BLE001 - not ONNX: InferenceSession says so, as ModelError
        return None, None
    props = {p.key: p.value for p in proto.metadata_props}
    try:
        card = ModelCard.from_metadata(props, source=str(path))
    except ModelError:
        card = None  # reported once the session is there
    return proto, card


def session_options(ort: Any, config: EngineConfig, cpu_arena: bool, gpu: bool) -> Any:
    """onnxruntime session options from ``config``: threads, spinning, the arena and the memory pattern."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(config.threads)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if config.spin else "0")
    opts.enable_cpu_mem_arena = cpu_arena
    if cpu_arena and config.arena_extend_same:
        register_cpu_arena(ort)
        opts.add_session_config_entry("session.use_env_allocators", "1")
    pattern = config.mem_pattern if config.mem_pattern is not None else gpu
    opts.enable_mem_pattern = bool(pattern) and not config.cuda_graph  # a captured graph fixes its memory
    return opts


def create_session(ort: Any, source: str | bytes, opts: Any, providers: list, probing: bool, path: Path) -> Any:
    """An ``InferenceSession``; any failure to load is a :class:`ModelError` naming ``path``."""
    # CUDA may be listed but unusable (no GPU, no CUDA libraries): onnxruntime then falls back
    # to the CPU with a screenful of errors. Silence them while probing; what the session
    # really got is checked (and logged) by the caller.
    ort.set_default_logger_severity(4 if probing else 3)
    try:
        return ort.InferenceSession(source, sess_options=opts, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for protobuf/IO/graph errors
        raise ModelError(f"cannot load model {path}: {short_error(exc)}") from None
    finally:
        ort.set_default_logger_severity(3)
