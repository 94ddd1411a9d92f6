"""Which onnxruntime execution providers a session gets, and their options.

``get_available_providers()`` lists CUDA wherever onnxruntime-gpu is installed, GPU or not, so the
engine asks for a list and then reads what the session really got (``session.get_providers()``).
"""

from __future__ import annotations

import threading
from pathlib import Path

from ..errors import LivedenoiseError
from ._config import EngineConfig
from ._modelcard import INPUT_NAME, ModelCard

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
PROVIDER_ALIASES = {"cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT, "trt": TENSORRT}
GPU_PROVIDERS = (CUDA, TENSORRT)


def resolve_provider(requested: str | None) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested:
        name = PROVIDER_ALIASES.get(requested.lower(), requested)
        if name not in available:
            raise LivedenoiseError(
                f"provider {requested!r} is not available in this onnxruntime; available: "
                + ", ".join(available)
            )
        if name == CPU:
            return [CPU]
        return [TENSORRT, CUDA, CPU] if name == TENSORRT and CUDA in available else [name, CPU]
    return [CUDA, CPU] if CUDA in available else [CPU]



_ARENA_LOCK = threading.Lock()
_ARENA_REGISTERED = False


def register_cpu_arena(ort) -> None:
    """Register, once per process, a CPU arena that extends by what is requested (the default
    doubles, holding up to twice the peak); sessions opt in with ``session.use_env_allocators``."""
    global _ARENA_REGISTERED
    with _ARENA_LOCK:
        if _ARENA_REGISTERED:
            return
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg({"arena_extend_strategy": 1}))  # kSameAsRequested
        _ARENA_REGISTERED = True




def provider_list(providers: list[str], config: EngineConfig, card: ModelCard | None) -> list:
    """The ``providers`` argument of ``InferenceSession``: names with their options (CUDA: arena
    growth, cuDNN search, CUDA graph; TensorRT: caches, fp16, CUDA graph, one profile per shape)."""
    cuda_opts = {
        "device_id": str(config.device_id),
        "arena_extend_strategy": "kSameAsRequested",
        "cudnn_conv_algo_search": "EXHAUSTIVE",  # paid once per input shape, in warm_up
        "do_copy_in_default_stream": "True",
    }
    if config.cuda_graph:
        cuda_opts["enable_cuda_graph"] = "True"
    out: list = []
    for name in providers:
        if name == CUDA:
            out.append((CUDA, cuda_opts))
        elif name == TENSORRT:
            # booleans as "True"/"False": onnxruntime's Python binding refuses "1"/"0" for TensorRT
            trt = {"device_id": str(config.device_id), "trt_fp16_enable": str(bool(config.trt_fp16))}
            if config.trt_cache is not None:
                cache = Path(config.trt_cache)
                cache.mkdir(parents=True, exist_ok=True)
                trt.update({
                    "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache),
                    "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache),
                })
            if config.cuda_graph:
                trt["trt_cuda_graph_enable"] = "True"
            trt.update(trt_profiles(config, card))
            out.append((TENSORRT, trt))
        else:
            out.append(name)
    return out


def trt_profiles(config: EngineConfig, card: ModelCard | None) -> dict[str, str]:
    """TensorRT optimisation profiles, one per configured frame shape: batch 1 to the shape's
    batch cap at its padded size (TensorRT rebuilds its engine for a shape outside every profile).
    Needs the card (size multiple, input frames); without it onnxruntime's defaults apply."""
    if card is None or not config.shapes:
        return {}
    m, k = max(1, card.size_multiple), card.input_frames
    lo, hi = [], []
    for h, w in config.shapes:
        hp, wp = -(-h // m) * m, -(-w // m) * m
        cap = max(1, min(config.max_batch, config.max_batch_pixels // (hp * wp)))
        lo.append(f"{INPUT_NAME}:1x{k}x{hp}x{wp}")
        hi.append(f"{INPUT_NAME}:{cap}x{k}x{hp}x{wp}")
    return {
        "trt_profile_min_shapes": ",".join(lo),
        "trt_profile_opt_shapes": ",".join(hi),
        "trt_profile_max_shapes": ",".join(hi),
    }
