"""The inference stage: an onnxruntime session with the model card's normalisation, padding and
batching (:class:`Engine`), the model card itself, and the transforms applied at load.

Numpy and onnxruntime only (onnxruntime is imported when an engine is built); no sockets.
"""

from ._config import EngineConfig
from ._engine import Engine, InferResult, default_model_path, resolve_model
from ._modelcard import (
    INPUT_NAME,
    METADATA_KEY,
    OUTPUT_NAME,
    PIXEL_SIZE_TOLERANCE,
    ModelCard,
    Normalisation,
    causal_windows,
    gaussian_lowpass,
    normalise,
    pixel_size_differs,
    to_display,
)
from ._providers import CPU, CUDA, GPU_PROVIDERS, TENSORRT, provider_list, resolve_provider
from ._transforms import rewrite_transposed_convs

__all__ = [
    "CPU",
    "CUDA",
    "GPU_PROVIDERS",
    "INPUT_NAME",
    "METADATA_KEY",
    "OUTPUT_NAME",
    "PIXEL_SIZE_TOLERANCE",
    "TENSORRT",
    "Engine",
    "EngineConfig",
    "InferResult",
    "ModelCard",
    "Normalisation",
    "causal_windows",
    "default_model_path",
    "gaussian_lowpass",
    "normalise",
    "pixel_size_differs",
    "provider_list",
    "resolve_model",
    "resolve_provider",
    "rewrite_transposed_convs",
    "to_display",
]
