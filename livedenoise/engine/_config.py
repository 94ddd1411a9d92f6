"""How the engine builds and feeds its session: :class:`EngineConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .._options import option
from ..errors import LivedenoiseError


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """How the session is built and fed. ``serve`` options map onto these fields.

    Parameters
    ----------
    provider : ``"cpu"``, ``"cuda"``, ``"tensorrt"`` or a full onnxruntime provider name;
        ``None`` picks CUDA where a session really gets it, the CPU otherwise.
    max_batch : the largest batch one session run takes.
    max_batch_pixels : and at most this many padded pixels per run (``batch * H * W``), which
        bounds activation memory for large frames: 2**20 gives 1024² frames one at a time, 512²
        four at a time, 128² frames ``max_batch`` at a time.
    threads : onnxruntime intra-op threads (0: onnxruntime's default, one per core).
    spin : let onnxruntime's worker threads spin-wait between runs. Off by default: in a live
        pipeline runs come in bursts, and spinning threads steal the cores that receiving and
        publishing need (measured on 2 cores: 1.8x the CPU time, 3x the wall time at 150 fps).
    shapes : the frame shapes ``(H, W)`` expected; :meth:`Engine.warm_up` runs them, TensorRT's
        optimisation profile spans them, and ``cuda_graph`` captures a graph for each.
    optimise_graph : rewrite stride-1 ``ConvTranspose`` as ``Conv`` at load (needs ``onnx``).
    cpu_arena : onnxruntime's CPU memory arena. ``None``: on (without it every run faults its
        memory in again, measured 1.3-1.8x slower), off only where a stride-1 ``ConvTranspose``
        model could not be rewritten (``onnx`` missing): its column buffers fragment the arena.
    arena_extend_same : grow the CPU arena by what is requested, not to the next power of two
        (an environment-wide allocator shared by this process's sessions).
    mem_pattern : onnxruntime's memory pattern (from the second run of a shape on, one block
        planned for all its tensors). ``None``: off on the CPU, where the block comes on top of
        what the first run left in the arena (paper preset at 1024²: 2.07 GiB resident with it,
        1.45 without, no measurable speed difference); on for GPU providers.
    io_binding : GPU providers: feed and fetch through an ``IOBinding`` with device OrtValues
        kept per run shape (also usable on the CPU, where it only adds a copy).
    cuda_graph : CUDA/TensorRT: capture one CUDA graph per shape in ``shapes`` (batch padded to
        the shape's batch cap); other shapes run without a graph.
    fixed_batch : run every batch at the frame size's batch cap (the unused rows are zeros or old
        frames, their outputs dropped), so each frame size is one input shape on the device.
        ``None``: on for GPU providers, where a live stream's batch sizes varying from 1 to the cap
        made serve fall behind at 150 fps (H100, ``rt`` 128²: 60 of 600 frames dropped, p50 240 ms;
        one fixed shape: none dropped, p50 3 ms, docs/benchmarks.md), and where a full batch costs
        little more than one frame (1.5 vs 1.1 ms). Off on the CPU, where it would cost ``cap`` times.
    fp16 : convert the model to float16 (inputs and outputs stay float32) and compare it with
        fp32 at load; above ``fp16_tolerance`` (max abs difference of the published [0, 1]
        frames) the engine keeps fp32 and says so.
    trt_cache : TensorRT engine (and timing) cache folder; building takes minutes, once.
    trt_fp16 : let TensorRT pick fp16 kernels (its own precision choice, not ``fp16``).
    device_id : the GPU.
    """

    provider: str | None = option(None, "onnxruntime provider: cpu, cuda, tensorrt (default: CUDA if a session gets it, else CPU).")
    max_batch: int = option(8, "Largest inference batch.")
    max_batch_pixels: int = option(1 << 20, "At most this many padded pixels per inference run (bounds memory on large frames).")
    threads: int = option(0, "onnxruntime intra-op threads (0: one per core).")
    spin: bool = option(False, "Let onnxruntime threads spin between runs (dedicated cores only).")
    shapes: tuple[tuple[int, int], ...] = option(
        ((128, 128),), "Frame sizes HxW to warm the model up for at start (comma-separated; '' for none)."
    )
    optimise_graph: bool = option(True, "Rewrite stride-1 ConvTranspose as Conv at load (needs onnx).")
    cpu_arena: bool | None = option(None, "onnxruntime's CPU memory arena (None: on, unless a rewrite failed).")
    arena_extend_same: bool = option(True, "Grow the CPU arena by what is requested, not to a power of two.")
    mem_pattern: bool | None = option(None, "onnxruntime's memory pattern (None: on for GPU providers only).")
    io_binding: bool | None = option(None, "Feed and fetch through an IOBinding (None: on for GPU providers only).")
    cuda_graph: bool = option(False, "GPU: capture a CUDA graph for the warm-up frame size.")
    fixed_batch: bool | None = option(None, "Run every batch at its size's cap (None: on for GPU providers only).")
    fp16: bool = option(False, "GPU: run the model in float16 if it matches fp32 within tolerance (checked at start).")
    fp16_tolerance: float = option(0.02, "Largest difference of fp16 from fp32 (published [0, 1] frames) accepted.")
    trt_cache: Path | None = option(None, "TensorRT engine cache folder (with --provider tensorrt).")
    trt_fp16: bool = option(False, "Let TensorRT pick fp16 kernels.")
    device_id: int = option(0, "The GPU.")

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_batch_pixels < 1:
            raise LivedenoiseError("--max-batch and --max-batch-pixels must be at least 1")
        if any(len(s) != 2 or min(s) < 1 for s in self.shapes):
            raise LivedenoiseError(f"frame shapes must be (H, W) with H, W >= 1, not {self.shapes}")
