"""The inference stage: an onnxruntime session that turns batches of raw frames into denoised ones.

The engine reads the :class:`~livedenoise.modelcard.ModelCard` from the model file, normalises
frames exactly as the trainer did (:func:`~livedenoise.modelcard.normalise`, written straight into
a preallocated input buffer: the only copy of the pixels), pads by reflection to the model's
``size_multiple``, runs the session and crops back. A batch may mix frame shapes: it is grouped by
shape, so any frame size the model accepts works without a restart.

Per frame the Python work is O(1) (one ``normalise`` call into a buffer slice); everything else is
vectorised over the group. Frames with NaN/inf pixels are rejected (``malformed``) with one
reduction over the group, and a group that fails inside onnxruntime is reported (``failed``)
without affecting the other groups.

Multi-frame models (``input_frames = k > 1``, causal): channel ``k - 1`` is the current frame and
channel ``k - 1 - j`` the frame ``j`` frames earlier *in the same series as received by the
engine*; missing history at the start of a series repeats the oldest frame available.

Memory and start-up (:class:`EngineConfig`; measured figures in ``docs/benchmarks.md``):

* one session run takes at most ``max_batch_pixels`` padded pixels (``batch * H * W``): a 1024²
  frame runs alone, 512² frames four at a time, 128² frames up to ``max_batch``;
* stride-1 ``ConvTranspose`` nodes (all of the ``paper`` preset's "valid" pairs) are rewritten as
  the equivalent ``Conv`` at load (:func:`rewrite_transposed_convs`, needs the ``onnx`` package):
  onnxruntime's CPU ``ConvTranspose`` expands a ``Cout*k*k x H*W`` column buffer (1.6 GB for a
  7x7 at 1024²), its ``Conv`` works in bounded tiles; same function, faster, a third of the memory;
* the CPU arena grows by what is asked (``kSameAsRequested``), not to the next power of two, and
  the memory pattern is off on the CPU (its planned block came on top of the arena's chunks);
* :meth:`Engine.warm_up` runs the configured frame shapes once at start, largest batch first, so the
  memory is reserved and (on CUDA) cuDNN has chosen its algorithms before the first real frame.

GPU (``provider="cuda"`` or ``"tensorrt"``): inputs and outputs go through an ``IOBinding`` with
OrtValues kept on the device per run shape; every batch runs at the frame size's batch cap
(``fixed_batch``: one device shape per frame size, whatever a live stream's batch sizes);
``cuda_graph`` captures one CUDA graph per warmed-up shape (partial batches are padded to the
fixed batch); ``fp16`` converts the model and checks it against fp32 at load
(:attr:`Engine.fp16_max_abs_diff`), keeping fp32 when it is off by more than ``fp16_tolerance``;
TensorRT builds its engines into ``trt_cache`` once. What the session really
runs on is :attr:`Engine.providers` (``session.get_providers()``), logged and published.

Examples
--------
>>> engine = Engine(model_path)                                   # doctest: +SKIP
>>> result = engine.infer([frame_a, frame_b], series=[1, 1])      # doctest: +SKIP
>>> result.outputs[0].shape == frame_a.shape                      # doctest: +SKIP
True
>>> Engine(model_path, EngineConfig(provider="cuda", fp16=True, cuda_graph=True,
...                                 shapes=((512, 512),))).describe()   # doctest: +SKIP
{'provider': 'CUDAExecutionProvider', 'precision': 'fp16', 'fp16_max_abs_diff': 0.004, ...}
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import warnings
from collections import Counter, OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from .errors import LivedenoiseError, ModelError
from .modelcard import INPUT_NAME, OUTPUT_NAME, ModelCard, normalise, to_display

log = logging.getLogger("livedenoise.engine")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
PROVIDER_ALIASES = {"cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT, "trt": TENSORRT}
GPU_PROVIDERS = (CUDA, TENSORRT)

MAX_CACHED_SHAPES = 4  # input buffers (and device bindings) kept for this many frame shapes
MAX_SERIES_HISTORY = 8  # series whose previous frames are kept (multi-frame models only)
CUDA_GRAPH_RUNS_BEFORE_CAPTURE = 2  # onnxruntime's CUDA EP captures on the third run of a graph id
VALIDATION_SIZE = 128  # side of the frames fp16 is checked on against fp32


def default_model_path() -> Path:
    """The model shipped inside the package (``livedenoise/models/default.onnx``)."""
    res = resources.files("livedenoise") / "models" / "default.onnx"
    if not res.is_file():
        raise ModelError(
            "no default model in this installation (livedenoise/models/default.onnx): "
            "pass --model FILE.onnx (make one with `livedenoise train`)"
        )
    return Path(str(res))


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

    provider: str | None = None
    max_batch: int = 8
    max_batch_pixels: int = 1 << 20
    threads: int = 0
    spin: bool = False
    shapes: tuple[tuple[int, int], ...] = ((128, 128),)
    optimise_graph: bool = True
    cpu_arena: bool | None = None
    arena_extend_same: bool = True
    mem_pattern: bool | None = None
    io_binding: bool | None = None  # None: on for GPU providers, off on the CPU
    cuda_graph: bool = False
    fixed_batch: bool | None = None  # None: on for GPU providers
    fp16: bool = False
    fp16_tolerance: float = 0.02
    trt_cache: Path | None = None
    trt_fp16: bool = False
    device_id: int = 0

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_batch_pixels < 1:
            raise LivedenoiseError("max batch and max batch pixels must be at least 1")
        if any(len(s) != 2 or min(s) < 1 for s in self.shapes):
            raise LivedenoiseError(f"frame shapes must be (H, W) with H, W >= 1, not {self.shapes}")


@dataclass(slots=True)
class InferResult:
    """Per input frame: the denoised ``(H, W)`` float32 frame in [0, 1], or ``None``.

    ``errors`` lists ``(index, kind, message)`` for the frames without output, ``kind`` being
    ``"malformed"`` (non-finite pixels) or ``"failed"`` (onnxruntime raised on its group).
    """

    outputs: list[np.ndarray | None]
    errors: list[tuple[int, str, str]] = field(default_factory=list)


def _reflect_index(n: int, start: int, stop: int) -> np.ndarray:
    """Source indices for positions ``start..stop-1`` of an axis of length ``n`` reflected
    (``numpy.pad`` mode ``reflect``, edge not repeated), repeated as often as needed."""
    pos = np.arange(start, stop)
    if n == 1:
        return np.zeros_like(pos)
    period = 2 * (n - 1)
    m = pos % period
    return np.where(m < n, m, period - m)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _resolve_provider(requested: str | None) -> list[str]:
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


# ---------------------------------------------------------------------------------- model transforms


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
    """Network input ``[frames, k, size, size]`` from simulated frames, normalised like a trained
    model's input (background near 0, the brightest atoms near +1): what precision checks run on."""
    from .modelcard import causal_windows
    from .simulate import SimConfig, simulate_movie

    movie = simulate_movie(SimConfig(size=size, frames=frames + card.input_frames - 1, seed=7))
    x = movie.noisy.astype(np.float32)
    lo = float(np.median(x))
    hi = float(np.percentile(x, 99.9))
    x = (x - lo) / (hi - lo if hi > lo else 1.0)
    k = card.input_frames
    return np.ascontiguousarray(causal_windows(x, k, np.arange(k - 1, x.shape[0])), dtype=np.float32)


def max_display_diff(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Max abs difference of two model outputs as published ([0, 1]); inf if either is not finite."""
    a = to_display(np.asarray(reference, np.float32))
    b = to_display(np.asarray(candidate, np.float32))
    if a.shape != b.shape or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("inf")
    return float(np.abs(a - b).max())


# ---------------------------------------------------------------------------------- device runs


@dataclass(slots=True)
class _Binding:
    binding: Any
    input: Any  # OrtValue on the device, fixed address
    output: Any
    run_options: Any
    graph_id: int | None = None
    runs: dict[int, int] = field(default_factory=dict)  # thread id -> runs on it (graph capture is per thread)


class _BoundRunner:
    """``session.run`` through an IOBinding: the input is copied into an OrtValue kept on the
    device per run shape, the output is written into another and copied back once.

    With CUDA graphs, each shape given to :meth:`add_graph` gets its graph id; its OrtValues are
    never freed (the captured graph holds their addresses). onnxruntime captures on the third run
    of a graph id *on a thread* (the graph lives in a per-thread context): the first run on a new
    thread replays the extra runs there, so a graph warmed up on one thread also serves another.
    """

    def __init__(self, session, device: str, device_id: int, graphs: bool):
        import onnxruntime as ort

        self._ort = ort
        self.session = session
        self.device = device
        self.device_id = device_id
        self.graphs = graphs
        self._graph_bindings: dict[tuple[int, ...], _Binding] = {}
        self._bindings: OrderedDict[tuple[int, ...], _Binding] = OrderedDict()
        self._plain = ort.RunOptions()
        if graphs:
            self._plain.add_run_config_entry("gpu_graph_id", "-1")  # no capture/replay for this run

    def _new(self, shape: tuple[int, ...], run_options, graph_id: int | None) -> _Binding:
        ort = self._ort
        out_shape = (shape[0], 1, *shape[2:])
        x = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, self.device, self.device_id)
        y = ort.OrtValue.ortvalue_from_shape_and_type(list(out_shape), np.float32, self.device, self.device_id)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(INPUT_NAME, x)
        binding.bind_ortvalue_output(OUTPUT_NAME, y)
        return _Binding(binding, x, y, run_options, graph_id)

    def add_graph(self, shape: tuple[int, ...]) -> None:
        if shape in self._graph_bindings:
            return
        graph_id = len(self._graph_bindings) + 1  # 0 is onnxruntime's own, -1 means none
        options = self._ort.RunOptions()
        options.add_run_config_entry("gpu_graph_id", str(graph_id))
        self._graph_bindings[shape] = self._new(shape, options, graph_id)

    def has_graph(self, shape: tuple[int, ...]) -> bool:
        return shape in self._graph_bindings

    def _binding(self, shape: tuple[int, ...]) -> _Binding:
        b = self._graph_bindings.get(shape)
        if b is not None:
            return b
        b = self._bindings.get(shape)
        if b is None:
            b = self._new(shape, self._plain, None)
            self._bindings[shape] = b
            while len(self._bindings) > MAX_CACHED_SHAPES:
                self._bindings.popitem(last=False)
        else:
            self._bindings.move_to_end(shape)
        return b

    def run(self, x: np.ndarray) -> np.ndarray:
        b = self._binding(x.shape)
        b.input.update_inplace(x)
        if b.graph_id is None:
            self.session.run_with_iobinding(b.binding, b.run_options)
        else:
            tid = threading.get_ident()
            done = b.runs.get(tid, 0)
            # the regular runs onnxruntime wants before capturing, then the capture; on a thread
            # that has not captured this graph yet (same input: the result is the same each time)
            for _ in range(max(1, CUDA_GRAPH_RUNS_BEFORE_CAPTURE + 1 - done)):
                self.session.run_with_iobinding(b.binding, b.run_options)
            b.runs[tid] = max(done + 1, CUDA_GRAPH_RUNS_BEFORE_CAPTURE + 1)
        b.binding.synchronize_outputs()
        out = b.output.numpy()  # from the device: a new host array; on the CPU: the bound memory itself
        return out.copy() if self.device == "cpu" else out


# ---------------------------------------------------------------------------------- the engine


class Engine:
    """An onnxruntime session with the model card's normalisation, padding and batching.

    Parameters
    ----------
    model : path of an ONNX file carrying a ``livedenoise`` model card.
    config : :class:`EngineConfig` (default: all defaults).
    provider, max_batch, threads, spin : override the fields of ``config`` of the same name
        (the keyword form existing callers use).

    Attributes reported (logs, ``stats``): :attr:`provider` (the first of :attr:`providers`, the
    session's real list), :attr:`precision` (``"fp32"`` or ``"fp16"``), :attr:`fp16_max_abs_diff`,
    :attr:`rewritten` (ConvTranspose nodes rewritten), :attr:`cpu_arena`, :attr:`io_binding`,
    :attr:`cuda_graph`; :meth:`describe` gives them all as a dict.

    Raises
    ------
    ModelError : the file is missing, unreadable, not ONNX, or has no valid model card.
    LivedenoiseError : a provider was asked for that the session does not get.
    """

    def __init__(
        self,
        model: str | Path,
        config: EngineConfig | None = None,
        *,
        provider: str | None = None,
        max_batch: int | None = None,
        threads: int | None = None,
        spin: bool | None = None,
    ):
        import onnxruntime as ort

        overrides = {"provider": provider, "max_batch": max_batch, "threads": threads, "spin": spin}
        config = dataclasses.replace(config or EngineConfig(), **{k: v for k, v in overrides.items() if v is not None})
        self.config = config
        self.path = Path(model)
        if not self.path.is_file():
            raise ModelError(f"model file not found: {self.path}")
        self.max_batch = int(config.max_batch)
        providers = _resolve_provider(config.provider)
        self._gpu = gpu = providers[0] in GPU_PROVIDERS  # asked for (the session may still fall back)

        proto, file_card = self._load_proto()
        self.rewritten = rewrite_transposed_convs(proto) if proto is not None and config.optimise_graph else 0
        if self.rewritten:
            log.info("rewrote %d stride-1 ConvTranspose nodes as Conv (bounded memory)", self.rewritten)
        source: str | bytes = proto.SerializeToString() if self.rewritten else str(self.path)
        self.cpu_arena = True if config.cpu_arena is None else bool(config.cpu_arena)
        providers_arg = provider_list(providers, config, file_card)
        probing = config.provider is None and gpu
        self.session = self._create(ort, source, self._session_options(ort, config), providers_arg, probing)
        meta = self.session.get_modelmeta()
        self.card = ModelCard.from_metadata(meta.custom_metadata_map, source=str(self.path))
        if (
            config.cpu_arena is None
            and not self.rewritten
            and self.session.get_providers()[0] == CPU
            and _has_unit_stride_transposed_convs(proto, self.card)
        ):
            # ConvTranspose's column buffers (GBs for large frames) fragment the arena: measured
            # 4.2-5.2 GiB resident for the paper preset at 1024^2 with it, 2.8-3.1 without
            log.warning("stride-1 ConvTranspose left in the model (onnx missing or optimise_graph off): "
                        "CPU arena off to bound memory, runs are slower")
            self.cpu_arena = False
            self.session = self._create(ort, source, self._session_options(ort, config), providers_arg, probing)
        self.providers: list[str] = list(self.session.get_providers())
        self.provider = self.providers[0]
        if config.provider and self.provider != providers[0]:
            raise LivedenoiseError(
                f"provider {config.provider!r} requested but the session runs on {self.provider}"
                " (no usable device?)"
            )
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs or len(inputs[INPUT_NAME].shape) != 4:
            raise ModelError(
                f"{self.path} does not follow the tensor contract: need input {INPUT_NAME!r} "
                f"[N, C, H, W] and output {OUTPUT_NAME!r}"
            )
        self.name = self.card.preset or self.path.stem
        self._k = int(self.card.input_frames)
        self._mult = max(1, int(self.card.size_multiple))
        self._buffers: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._history: OrderedDict[int, deque[np.ndarray]] = OrderedDict()
        self.run_shapes: Counter[tuple[int, ...]] = Counter()  # session runs per input shape
        self.warmed: set[tuple[int, ...]] = set()  # input shapes run by warm_up

        self.precision = "fp32"
        self.fp16_max_abs_diff: float | None = None
        on_gpu = self.provider in GPU_PROVIDERS
        self.io_binding = bool(config.io_binding if config.io_binding is not None else on_gpu)
        self.cuda_graph = bool(config.cuda_graph and on_gpu and self.io_binding)
        if config.fp16:
            self._switch_to_fp16(ort, proto, self._session_options(ort, config), providers_arg)
        del proto, source  # the parsed model (45 MB for paper) is the session's now
        self._runner: _BoundRunner | None = None
        if self.io_binding:
            device = "cuda" if on_gpu else "cpu"
            self._runner = _BoundRunner(self.session, device, config.device_id if on_gpu else 0, self.cuda_graph)
            for shape in config.shapes if self.cuda_graph else ():
                self._runner.add_graph(self._run_shape(shape))
        self._fixed_batch = self._runner is not None and (on_gpu if config.fixed_batch is None else config.fixed_batch)
        log.info("model %s (preset %s) on %s", self.path, self.name, self.provider)
        log.info("engine: %s", self.describe())

    # ------------------------------------------------------------------ construction

    def _load_proto(self):
        """The model as ``onnx.ModelProto`` and its card, or ``(None, None)`` where ``onnx`` is
        missing or the file does not parse (onnxruntime then reports the error)."""
        try:
            import onnx
        except ImportError:
            log.warning("the onnx package is not installed: the model runs as exported (no ConvTranspose "
                        "rewrite, no fp16, no TensorRT profiles); pip install onnx")
            return None, None
        try:
            proto = onnx.load(str(self.path))
        except Exception:  # noqa: BLE001  not ONNX: InferenceSession says so, as ModelError
            return None, None
        props = {p.key: p.value for p in proto.metadata_props}
        try:
            card = ModelCard.from_metadata(props, source=str(self.path))
        except ModelError:
            card = None  # reported once the session is there
        return proto, card

    def _session_options(self, ort, config: EngineConfig):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(config.threads)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if config.spin else "0")
        opts.enable_cpu_mem_arena = self.cpu_arena
        if self.cpu_arena and config.arena_extend_same:
            _register_cpu_arena(ort)
            opts.add_session_config_entry("session.use_env_allocators", "1")
        pattern = config.mem_pattern if config.mem_pattern is not None else self._gpu
        opts.enable_mem_pattern = bool(pattern) and not config.cuda_graph  # a captured graph fixes its memory
        return opts

    def _create(self, ort, source, opts, provider_list, probing: bool):
        # CUDA may be listed but unusable (no GPU, no CUDA libraries): onnxruntime then falls back
        # to the CPU with a screenful of errors. Silence them while probing; what the session
        # really got is checked (and logged) by the caller.
        ort.set_default_logger_severity(4 if probing else 3)
        try:
            return ort.InferenceSession(source, sess_options=opts, providers=provider_list)
        except Exception as exc:  # onnxruntime raises its own types for protobuf/IO/graph errors
            raise ModelError(f"cannot load model {self.path}: {_short(exc)}") from None
        finally:
            ort.set_default_logger_severity(3)

    def _switch_to_fp16(self, ort, proto, opts, provider_list) -> None:
        """Convert to fp16, compare with the fp32 session on :func:`validation_batch`, keep the
        fp16 session only within ``fp16_tolerance``."""
        if proto is None:
            log.warning("fp16 needs the onnx package and a readable model: running fp32")
            return
        run_options = ort.RunOptions()
        if self.cuda_graph:
            run_options.add_run_config_entry("gpu_graph_id", "-1")  # plain runs, no capture
        try:
            session16 = self._create(ort, to_fp16(proto).SerializeToString(), opts, provider_list, probing=False)
            x = validation_batch(self.card)
            (ref,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: x}, run_options)
            (got,) = session16.run([OUTPUT_NAME], {INPUT_NAME: x}, run_options)
        except Exception as exc:  # noqa: BLE001  conversion or an fp16 kernel missing on this provider
            log.warning("fp16 model unusable here (%s): running fp32", _short(exc))
            return
        self.fp16_max_abs_diff = max_display_diff(ref, got)
        if not self.fp16_max_abs_diff <= self.config.fp16_tolerance:
            log.warning(
                "fp16 differs from fp32 by %.3g (> %.3g) on the validation frames: running fp32",
                self.fp16_max_abs_diff, self.config.fp16_tolerance,
            )
            return
        log.info("fp16: max |fp16 - fp32| = %.2e on the validation frames", self.fp16_max_abs_diff)
        self.session = session16
        self.providers = list(session16.get_providers())
        self.provider = self.providers[0]
        self.precision = "fp16"

    def describe(self) -> dict[str, Any]:
        """What this engine really runs: provider list, precision, memory and GPU options."""
        return {
            "provider": self.provider,
            "providers": self.providers,
            "precision": self.precision,
            "fp16_max_abs_diff": self.fp16_max_abs_diff,
            "rewritten_conv_transpose": self.rewritten,
            "cpu_arena": self.cpu_arena,
            "io_binding": self.io_binding,
            "cuda_graph": self.cuda_graph,
            "fixed_batch": self._fixed_batch,
            "max_batch": self.max_batch,
            "max_batch_pixels": self.config.max_batch_pixels,
        }

    # ------------------------------------------------------------------ helpers

    def padded_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        m = self._mult
        return (-(-shape[0] // m) * m, -(-shape[1] // m) * m)

    def batch_cap(self, shape: tuple[int, int]) -> int:
        """Frames of ``shape`` one session run takes at most (``max_batch``, ``max_batch_pixels``)."""
        hp, wp = self.padded_shape(shape)
        return max(1, min(self.max_batch, self.config.max_batch_pixels // (hp * wp)))

    def _run_shape(self, shape: tuple[int, int], n: int | None = None) -> tuple[int, int, int, int]:
        hp, wp = self.padded_shape(shape)
        return (self.batch_cap(shape) if n is None else n, self._k, hp, wp)

    def _buffer(self, shape: tuple[int, int]) -> np.ndarray:
        padded = self.padded_shape(shape)
        buf = self._buffers.get(padded)
        if buf is None:
            # zeros, not empty: CUDA-graph runs use the whole batch, unused rows included
            buf = np.zeros((self.batch_cap(shape), self._k, *padded), np.float32)
            self._buffers[padded] = buf
            while len(self._buffers) > MAX_CACHED_SHAPES:
                self._buffers.popitem(last=False)
        else:
            self._buffers.move_to_end(padded)
        return buf

    def warm_up(self, *shapes: tuple[int, int], batch_sizes: Sequence[int] | None = None) -> list[tuple]:
        """Run each frame shape (default: ``config.shapes``) once per batch size before real frames.

        Batch sizes (default): on the CPU the shape's batch cap then 1, largest first, so the
        arena is reserved in one piece (measured: a batch size not run before costs no more than
        a known one once the memory is there); with ``fixed_batch`` (GPU default) or a CUDA graph
        the cap only, the one shape that will run; otherwise on CUDA/TensorRT every size from the
        cap down to 1 (cuDNN searches its algorithms, TensorRT picks kernels, per input shape).
        Returns ``[(shape, batch, seconds)]``.
        """
        report = []
        for shape in shapes or self.config.shapes:
            shape = (int(shape[0]), int(shape[1]))
            cap = self.batch_cap(shape)
            if batch_sizes is not None:
                sizes = sorted({min(int(b), cap) for b in batch_sizes if b >= 1}, reverse=True)
            elif self._runner is not None and (self._fixed_batch or self._runner.has_graph(self._run_shape(shape))):
                sizes = [cap]
            elif self.provider in GPU_PROVIDERS:
                sizes = list(range(cap, 0, -1))
            else:
                sizes = sorted({cap, 1}, reverse=True)
            for n in sizes:
                t0 = time.perf_counter()
                result = self.infer([np.zeros(shape, np.float32)] * n, series=[-1] * n)
                dt = time.perf_counter() - t0
                if result.errors:
                    log.warning("warm-up at %dx%d failed: %s", *shape, result.errors[0][2])
                    break
                self.warmed.add(self._run_shape(shape, n))
                report.append((shape, n, dt))
            self._history.pop(-1, None)
        if report:
            log.info("warm-up: " + ", ".join(f"{h}x{w} batch {n} {dt * 1e3:.0f} ms" for (h, w), n, dt in report))
        return report

    # ------------------------------------------------------------------ inference

    def infer(self, frames: Sequence[np.ndarray], series: Sequence[int] | None = None) -> InferResult:
        """Denoise ``frames`` (any mix of 2-D shapes and supported dtypes).

        ``series`` (one id per frame) is needed only by multi-frame models, for their history.
        Outputs are in [0, 1] (:func:`~livedenoise.modelcard.to_display`), float32, C-order.
        """
        result = InferResult([None] * len(frames))
        groups: dict[tuple[int, int], list[int]] = {}
        for i, f in enumerate(frames):
            groups.setdefault(f.shape, []).append(i)
        for shape, idx in groups.items():
            cap = self.batch_cap(shape)
            for start in range(0, len(idx), cap):
                self._infer_group(frames, series, shape, idx[start : start + cap], result)
        return result

    def _run(self, x: np.ndarray) -> np.ndarray:
        self.run_shapes[x.shape] += 1
        if self._runner is not None:
            return self._runner.run(x)
        (out,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: x})
        return out

    def _infer_group(self, frames, series, shape, idx: list[int], result: InferResult) -> None:
        h, w = shape
        hp, wp = self.padded_shape(shape)
        buf = self._buffer(shape)
        n = len(idx)
        norm = self.card.normalisation
        k = self._k
        for j, i in enumerate(idx):
            normalise(frames[i], norm, out=buf[j, k - 1, :h, :w])
        # float frames only (integers are always finite): one reduction for the whole group, a
        # non-finite pixel makes its frame's sum non-finite
        if any(frames[i].dtype.kind == "f" for i in idx):
            good = np.isfinite(buf[:n, k - 1, :h, :w].sum(axis=(1, 2), dtype=np.float64))
        else:
            good = None
        if good is not None and not good.all():
            keep = np.flatnonzero(good)
            for j in np.flatnonzero(~good):
                result.errors.append((idx[j], "malformed", "frame has NaN or infinite pixels"))
            if keep.size == 0:
                buf[:n] = 0.0  # no NaN left behind for a padded (CUDA-graph) run
                return
            buf[: keep.size] = buf[keep]
            buf[keep.size : n] = 0.0
            idx = [idx[j] for j in keep]
            n = len(idx)
        if k > 1:
            self._fill_history(buf, idx, series, shape)
        if hp > h:
            buf[:n, :, h:hp, :w] = buf[:n, :, _reflect_index(h, h, hp), :w]
        if wp > w:
            buf[:n, :, :, w:wp] = buf[:n, :, :, _reflect_index(w, w, wp)]
        # a captured CUDA graph has a fixed batch: run the whole buffer, use the first n rows
        padded_run = self._runner is not None and (self._fixed_batch or self._runner.has_graph(buf.shape))
        try:
            out = self._run(buf if padded_run else buf[:n])
        except Exception as exc:  # onnxruntime errors: wrong shape, a failing op, out of memory
            message = _short(exc)
            for i in idx:
                result.errors.append((i, "failed", message))
            return
        if out.ndim != 4 or out.shape[0] < n or out.shape[-2:] != (hp, wp):
            for i in idx:
                result.errors.append((i, "failed", f"model output has shape {out.shape}"))
            return
        out = out[:n, 0]
        if (hp, wp) != (h, w):
            out = out[:, :h, :w]
        out = np.ascontiguousarray(out, dtype=np.float32)
        to_display(out, out=out)
        for j, i in enumerate(idx):
            result.outputs[i] = out[j]

    def _fill_history(self, buf: np.ndarray, idx: list[int], series, shape) -> None:
        """Multi-frame models: channels 0..k-2 from each frame's series history (causal)."""
        k = self._k
        h, w = shape
        for j, i in enumerate(idx):
            sid = series[i] if series is not None else 0
            hist = self._history.get(sid)
            if hist is None or (hist and hist[-1].shape != shape):
                hist = deque(maxlen=k - 1)
                self._history[sid] = hist
            self._history.move_to_end(sid)
            while len(self._history) > MAX_SERIES_HISTORY:
                self._history.popitem(last=False)
            current = buf[j, k - 1, :h, :w]
            past = list(hist)
            for c in range(k - 1):
                back = k - 1 - c  # frames before the current one
                src = past[-back] if back <= len(past) else (past[0] if past else current)
                buf[j, c, :h, :w] = src
            hist.append(current.copy())

    def reset_series(self, series_id: int) -> None:
        """Forget a series' history (a new ``start`` for it, or its ``end``)."""
        self._history.pop(series_id, None)


_ARENA_LOCK = threading.Lock()
_ARENA_REGISTERED = False


def _register_cpu_arena(ort) -> None:
    """Register, once per process, a CPU arena that extends by what is requested (the default
    doubles, holding up to twice the peak); sessions opt in with ``session.use_env_allocators``."""
    global _ARENA_REGISTERED
    with _ARENA_LOCK:
        if _ARENA_REGISTERED:
            return
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg({"arena_extend_strategy": 1}))  # kSameAsRequested
        _ARENA_REGISTERED = True



def _unit_stride_transposed_convs(model) -> int:
    return sum(
        1 for node in model.graph.node
        if node.op_type == "ConvTranspose"
        and all(a.name != "strides" or all(v == 1 for v in a.ints) for a in node.attribute)
    )


def _has_unit_stride_transposed_convs(proto, card: ModelCard) -> bool:
    """Whether the model keeps stride-1 ConvTranspose nodes (from the graph, else from the card:
    the ``paper`` preset's "valid" convolutions are made of them)."""
    if proto is not None:
        return _unit_stride_transposed_convs(proto) > 0
    return card.training.get("conv") == "valid"


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
